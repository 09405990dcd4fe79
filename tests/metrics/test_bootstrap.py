"""Bootstrap intervals and paired tests of the image metrics: against scikit-learn on explicitly resampled data,
coverage on simulated data with a known AUROC, DeLong against the bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from anomaly_zoo.metrics.bootstrap import (
    delong_p,
    image_intervals,
    paired_bootstrap_p,
    resampled_image_metrics,
    stratified_resamples,
    weighted_image_metrics,
)


def case(seed: int, n: int = 60, ties: bool = True):
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.4
    scores = rng.normal(size=n) + labels
    if ties:
        scores = np.round(scores, 1)  # many ties, also across labels
    return scores, labels


def sklearn_f1max(labels, scores) -> float:
    precision, recall, _ = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore"):
        f1 = 2 * precision * recall / (precision + recall)
    return float(np.max(f1[np.isfinite(f1)]))


def test_resampled_metrics_equal_sklearn_on_the_explicitly_resampled_images():
    scores, labels = case(0)
    cats = ["a"] * 30 + ["b"] * 30
    counts = stratified_resamples(labels, cats, 20, seed=1)
    per_category, mean = resampled_image_metrics(scores, labels, cats, counts)
    for b in range(20):
        means = []
        for c, idx in (("a", np.arange(30)), ("b", np.arange(30, 60))):
            chosen = np.repeat(idx, counts[b, idx])  # the resampled test set, duplicates and all
            y, s = labels[chosen], scores[chosen]
            expected = {"I-AUROC": roc_auc_score(y, s), "I-AP": average_precision_score(y, s),
                        "I-F1max": sklearn_f1max(y, s)}  # fmt: skip
            for metric, value in expected.items():
                assert per_category[c][metric][b] == pytest.approx(value, abs=1e-9), (b, c, metric)
            means.append(expected)
        for metric in ("I-AUROC", "I-AP", "I-F1max"):
            assert mean[metric][b] == pytest.approx(np.mean([m[metric] for m in means]), abs=1e-9)


def test_resamples_keep_every_stratum_size():
    labels = np.array([0, 0, 0, 1, 1, 0, 1, 1, 1, 0])
    cats = ["x"] * 5 + ["y"] * 5
    counts = stratified_resamples(labels, cats, 50, seed=0)
    for c in ("x", "y"):
        for label in (0, 1):
            members = [i for i in range(10) if cats[i] == c and labels[i] == label]
            assert (counts[:, members].sum(1) == len(members)).all()
    assert counts.std(0).min() > 0  # really resampled
    ones = weighted_image_metrics(np.arange(10.0), labels, np.ones((1, 10)))
    assert ones["I-AUROC"][0] == pytest.approx(roc_auc_score(labels, np.arange(10.0)))


def test_interval_coverage_on_simulated_test_sets_with_a_known_auroc():
    """Normal scores N(0, 1), defective N(d, 1): AUROC = Φ(d / √2). About 95 % of 200 simulated test sets' intervals
    contain it (percentile intervals run a little narrow at 40 images per class: 0.90-0.99 accepted)."""
    d = 1.0
    truth = norm.cdf(d / math.sqrt(2))
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(40, bool), np.ones(40, bool)]
    hits = 0
    for trial in range(200):
        scores = rng.normal(size=80) + d * labels
        low, high = image_intervals(scores, labels, ["c"] * 80, n_resamples=400, seed=trial)["mean"]["I-AUROC"]
        hits += low <= truth <= high
    assert 0.90 <= hits / 200 <= 0.99, hits


def test_paired_tests_tell_equal_from_different_scorings():
    scores, labels = case(3, n=200, ties=False)
    cats = ["a"] * 100 + ["b"] * 100
    assert paired_bootstrap_p(scores, scores, labels, cats, "I-AUROC", 200) == 1.0
    assert delong_p(scores, scores, labels, cats) == 1.0
    noisy = scores + np.random.default_rng(4).normal(scale=3.0, size=200)  # much worse
    assert paired_bootstrap_p(scores, noisy, labels, cats, "I-AUROC", 500) < 0.01
    assert delong_p(scores, noisy, labels, cats) < 0.01
    slightly = scores + np.random.default_rng(5).normal(scale=0.05, size=200)  # the same detector, jittered
    assert paired_bootstrap_p(scores, slightly, labels, cats, "I-AUROC", 500) > 0.05
    assert delong_p(scores, slightly, labels, cats) > 0.05


def test_delong_variance_agrees_with_the_bootstrap():
    """DeLong's variance of an AUROC difference against the bootstrap's variance of the same difference."""
    scores, labels = case(6, n=300, ties=False)
    other = scores + np.random.default_rng(7).normal(scale=0.8, size=300)
    cats = ["c"] * 300
    counts = stratified_resamples(labels, cats, 2000, seed=0)
    a = resampled_image_metrics(scores, labels, cats, counts)[1]["I-AUROC"]
    b = resampled_image_metrics(other, labels, cats, counts)[1]["I-AUROC"]
    diff = roc_auc_score(labels, scores) - roc_auc_score(labels, other)
    z_bootstrap = abs(diff) / np.std(a - b)
    z_delong = norm.isf(delong_p(scores, other, labels, cats) / 2)
    assert z_delong == pytest.approx(z_bootstrap, rel=0.15)


def test_undefined_categories_are_nan_not_errors():
    out = weighted_image_metrics(np.arange(4.0), np.zeros(4, bool), np.ones((3, 4)))
    assert all(np.isnan(v).all() for v in out.values())
    assert image_intervals(np.arange(4.0), np.zeros(4, bool), ["a"] * 4, 10)["mean"]["I-AUROC"] is None
