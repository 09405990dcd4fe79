"""Image-level confidence intervals and paired significance tests: the bootstrap over test images, DeLong's test.

A bootstrap resample draws, within every (category, normal/defective) stratum, as many images as the stratum holds,
with replacement, so every resample keeps each category's size and defect share. It only reweights images: a
resample is a vector of counts, and every metric is computed from the scores sorted once, for all resamples at once
(`weighted_image_metrics`: group sums of the counts over the distinct score values, then cumulative sums). With
integer counts the values equal scikit-learn's on the explicitly resampled data (tests check it to 1e-9).

Pixel-level intervals: `pixel_bootstrap.py` (`eval.pixel_bootstrap_resamples`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np

IMAGE_METRICS: tuple[str, ...] = ("I-AUROC", "I-AP", "I-F1max")
DEFAULT_RESAMPLES = 1000
LEVEL = 0.95


def stratified_resamples(labels: np.ndarray, categories: Sequence[str], n_resamples: int, seed: int = 0) -> np.ndarray:
    """(n_resamples, N) int32 counts: how often each image is drawn, stratified by category and label."""
    labels = np.asarray(labels).astype(bool)
    cats = np.asarray(list(categories))
    counts = np.zeros((n_resamples, labels.size), dtype=np.int32)
    rng = np.random.default_rng(seed)
    for category in dict.fromkeys(cats.tolist()):
        for label in (False, True):
            members = np.flatnonzero((cats == category) & (labels == label))
            m = members.size
            if m == 0:
                continue
            draws = rng.integers(0, m, size=(n_resamples, m)) + m * np.arange(n_resamples)[:, None]
            counts[:, members] = np.bincount(draws.ravel(), minlength=n_resamples * m).reshape(n_resamples, m)
    return counts


def weighted_image_metrics(scores: np.ndarray, labels: np.ndarray, counts: np.ndarray) -> dict[str, np.ndarray]:
    """I-AUROC, I-AP and I-F1max of one category for every row of `counts` (B, N): each image counted that often.

    AUROC = Σ_pos w·(weighted negatives below + ½ tied) / (W_pos·W_neg); AP = Σ over distinct thresholds of the
    recall step × precision (scikit-learn's step-wise sum); F1-max the best 2·TP / (TP + FP + W_pos). NaN where a
    resample has no positive or no negative weight.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    counts = np.atleast_2d(counts).astype(np.float64)
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    starts = np.flatnonzero(np.diff(sorted_scores, prepend=-np.inf) != 0)  # first index of each distinct value
    w = counts[:, order]
    pos = np.add.reduceat(w * labels[order], starts, axis=1)  # (B, G) positive weight per distinct value
    neg = np.add.reduceat(w * ~labels[order], starts, axis=1)
    n_pos, n_neg = pos.sum(1), neg.sum(1)
    neg_below = np.cumsum(neg, axis=1) - neg
    with np.errstate(invalid="ignore", divide="ignore"):
        auroc = (pos * (neg_below + 0.5 * neg)).sum(1) / (n_pos * n_neg)
        tp = np.cumsum(pos[:, ::-1], axis=1)[:, ::-1]  # weight at or above each distinct value
        fp = np.cumsum(neg[:, ::-1], axis=1)[:, ::-1]
        precision = np.where(tp > 0, tp / (tp + fp), 0.0)
        ap = (pos * precision).sum(1) / n_pos
        f1max = (2 * tp / (tp + fp + n_pos[:, None])).max(1)
    undefined = (n_pos == 0) | (n_neg == 0)
    return {name: np.where(undefined, np.nan, value) for name, value in
            (("I-AUROC", auroc), ("I-AP", ap), ("I-F1max", f1max))}  # fmt: skip


def resampled_image_metrics(
    scores: np.ndarray, labels: np.ndarray, categories: Sequence[str], counts: np.ndarray, flip_auroc: bool = False
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """Per category and mean over categories (per resample, as the suite's mean), each metric as a (B,) array.
    `flip_auroc`: an official protocol's AUROC < 0.5 → 1 − AUROC, per category and resample."""
    cats = np.asarray(list(categories))
    per_category = {}
    for category in dict.fromkeys(cats.tolist()):
        idx = np.flatnonzero(cats == category)
        per_category[category] = weighted_image_metrics(scores[idx], labels[idx], counts[:, idx])
        if flip_auroc:
            auroc = per_category[category]["I-AUROC"]
            per_category[category]["I-AUROC"] = np.where(auroc < 0.5, 1.0 - auroc, auroc)
    with warnings.catch_warnings():  # a resample where every category is undefined: NaN, without a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = {m: np.nanmean(np.stack([row[m] for row in per_category.values()]), axis=0) for m in IMAGE_METRICS}
    return per_category, mean


def _interval(values: np.ndarray, level: float) -> list[float] | None:
    finite = values[np.isfinite(values)]
    if finite.size < 2:
        return None
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(finite, [tail, 100 - tail])
    return [float(low), float(high)]


def image_intervals(
    scores: np.ndarray,
    labels: np.ndarray,
    categories: Sequence[str],
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
    flip_auroc: bool = False,
) -> dict:
    """Percentile bootstrap intervals of the image metrics, per category and of their mean (results.json
    `intervals`): {"method", "resamples", "level", "categories": {c: {metric: [low, high]}}, "mean": {...}}."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    counts = stratified_resamples(labels, categories, n_resamples, seed)
    per_category, mean = resampled_image_metrics(scores, labels, categories, counts, flip_auroc)
    return {
        "method": "percentile bootstrap over test images, stratified by category and normal/defective",
        "resamples": int(n_resamples),
        "seed": int(seed),
        "level": float(level),
        "metrics": list(IMAGE_METRICS),
        "categories": {c: {m: _interval(v[m], level) for m in IMAGE_METRICS} for c, v in per_category.items()},
        "mean": {m: _interval(mean[m], level) for m in IMAGE_METRICS},
    }


def paired_bootstrap_p(
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    labels: np.ndarray,
    categories: Sequence[str],
    metric: str,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> float:
    """Two-sided p-value of "the mean-over-categories `metric` of A and B are equal", from the same resamples of the
    same test images for both (paired): twice the smaller share of resamples on either side of zero."""
    labels = np.asarray(labels).astype(bool)
    counts = stratified_resamples(labels, categories, n_resamples, seed)
    a = resampled_image_metrics(np.asarray(scores_a, dtype=np.float64), labels, categories, counts)[1][metric]
    b = resampled_image_metrics(np.asarray(scores_b, dtype=np.float64), labels, categories, counts)[1][metric]
    diff = (a - b)[np.isfinite(a - b)]
    if diff.size == 0:
        return math.nan
    if np.all(diff == 0):
        return 1.0
    return float(min(1.0, 2 * min(np.mean(diff <= 0), np.mean(diff >= 0))))


def delong_p(scores_a: np.ndarray, scores_b: np.ndarray, labels: np.ndarray, categories: Sequence[str]) -> float:
    """DeLong's test (DeLong, DeLong & Clarke-Pearson 1988) of equal mean-over-categories AUROC for two scorings of
    the same images: per category the AUROC difference and its variance from the placement values; categories are
    disjoint image sets, so the mean's variance is the sum over categories / C². Two-sided normal p-value."""
    labels = np.asarray(labels).astype(bool)
    cats = np.asarray(list(categories))
    diffs, variances = [], []
    for category in dict.fromkeys(cats.tolist()):
        idx = np.flatnonzero(cats == category)
        y = labels[idx]
        if y.all() or not y.any():
            continue
        placements = []
        for scores in (scores_a, scores_b):
            s = np.asarray(scores, dtype=np.float64)[idx]
            pos, neg = s[y], s[~y]
            # placement values: for each positive, the share of negatives below it (ties half), and vice versa
            v10 = ((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean(1)
            v01 = ((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean(0)
            placements.append((v10, v01))
        (a10, a01), (b10, b01) = placements
        s10, s01 = np.cov(np.stack([a10, b10])), np.cov(np.stack([a01, b01]))
        var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / a10.size + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / a01.size
        diffs.append(a10.mean() - b10.mean())
        variances.append(var)
    if not diffs:
        return math.nan
    diff, var = float(np.mean(diffs)), float(np.sum(variances)) / len(diffs) ** 2
    if var <= 0:
        return 1.0 if diff == 0 else 0.0
    return float(math.erfc(abs(diff) / math.sqrt(2 * var)))
