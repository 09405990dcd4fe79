"""Pixel-metric resamples from one sort: equal to the suite on the explicitly resampled images."""

from __future__ import annotations

import numpy as np
import pytest

from anomaly_zoo.metrics import compute_metrics
from anomaly_zoo.metrics.bootstrap import stratified_resamples
from anomaly_zoo.metrics.pixel_bootstrap import PIXEL_METRICS, PixelResampler, pixel_resampled_metrics
from tests.metrics.test_suite import random_case


@pytest.mark.parametrize("levels", [None, 6])  # continuous maps, and maps with many ties (6 grey levels)
@pytest.mark.parametrize("chunk", [16384, 7])  # one block, and many blocks of defect values (carried sums)
def test_every_resample_equals_the_suite_on_the_resampled_images(levels, chunk):
    scores, labels, maps, masks = random_case(21, n=10, levels=levels)
    counts = stratified_resamples(labels, ["c"] * len(labels), 12, seed=3)
    counts[0] = 1  # the original test set itself
    got = PixelResampler(maps, masks).metrics(counts, chunk=chunk)
    for b in range(len(counts)):
        chosen = np.repeat(np.arange(len(labels)), counts[b])
        expected = compute_metrics(scores[chosen], labels[chosen], maps[chosen], masks[chosen])
        for metric in PIXEL_METRICS:
            assert got[metric][b] == pytest.approx(expected[metric], abs=1e-9), (b, metric)


def test_categories_and_their_mean():
    parts = [random_case(seed, n=8) for seed in (30, 31)]
    scores, labels, maps, masks = (np.concatenate(x) for x in zip(*parts, strict=True))
    cats = ["a"] * 8 + ["b"] * 8
    counts = stratified_resamples(labels, cats, 5, seed=0)
    per_category, mean = pixel_resampled_metrics(maps, masks, cats, counts)
    for b in range(5):
        values = []
        for c, idx in (("a", np.arange(8)), ("b", np.arange(8, 16))):
            chosen = np.repeat(idx, counts[b, idx])
            values.append(compute_metrics(scores[chosen], labels[chosen], maps[chosen], masks[chosen])["P-AUROC"])
            assert per_category[c]["P-AUROC"][b] == pytest.approx(values[-1], abs=1e-9)
        assert mean["P-AUROC"][b] == pytest.approx(np.mean(values), abs=1e-9)


def test_no_defect_pixels_is_nan():
    maps = np.random.default_rng(0).random((3, 8, 8)).astype(np.float32)
    out = PixelResampler(maps, np.zeros((3, 8, 8), np.uint8)).metrics(np.ones((2, 3)))
    assert all(np.isnan(v).all() for v in out.values())


def test_run_intervals_hold_the_pixel_metrics_when_asked(compose_cfg, tmp_path):
    import json
    from pathlib import Path

    from anomaly_zoo.runner import run

    overrides = ["~method", "+method._target_=tests.helpers.pixel_method.PixelDeviation", "+method.name=pixel",
                 "dataset.categories=[logo,coin]", "dataset.image_size=48", "eval.heatmaps_per_category=0",
                 "eval.pixel_bootstrap_resamples=50"]  # fmt: skip
    cfg = compose_cfg("test", overrides)
    res = json.loads(Path(run(cfg, fit=False)["results_path"]).read_text())
    assert res["intervals"]["pixel_resamples"] == 50
    for metric in PIXEL_METRICS:
        low, high = res["intervals"]["mean"][metric]
        assert low <= res["mean"][metric] <= high, metric
        assert res["intervals"]["categories"]["coin"][metric] is not None
