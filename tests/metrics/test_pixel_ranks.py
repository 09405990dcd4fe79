"""The pixel ranking split over threads: the same ranks, order statistics and metrics whatever the split."""

from __future__ import annotations

import numpy as np
import pytest

from anomaly_zoo.metrics import compute_metrics, pixel_ranks
from anomaly_zoo.metrics.curves import SortedParts
from anomaly_zoo.metrics.protocols import binned_pro
from tests.metrics.test_suite import random_case, slow_pro


def _parts(values: np.ndarray, cuts: list[int]) -> SortedParts:
    return SortedParts([np.sort(p) for p in np.split(values, cuts)])


@pytest.mark.parametrize("seed", range(6))
def test_sorted_parts_answer_as_the_merged_sorted_array(seed):
    rng = np.random.default_rng(seed)
    values = np.floor(rng.normal(size=301) * 4).astype(np.float32) / 4  # negatives, ties
    values[:5], values[5:9] = -0.0, 0.0  # signed zeros compare equal
    rng.shuffle(values)
    cuts = sorted(rng.choice(np.arange(1, 300), size=int(rng.integers(1, 6)), replace=False).tolist())
    merged, parts = np.sort(values), _parts(values, cuts)
    assert parts.size == merged.size and parts.min() == merged[0] and parts.max() == merged[-1]
    for k in [0, 1, 7, 150, 299, 300, *rng.integers(0, 301, size=20).tolist()]:
        assert parts.kth(k) == merged[k], k
    probes = np.concatenate([merged, merged + 0.125, [-np.inf, np.inf]]).astype(np.float32)
    for side in ("left", "right"):
        assert np.array_equal(parts.count(probes, side), np.searchsorted(merged, probes, side=side))


def test_an_empty_part_is_ignored_and_an_empty_set_has_size_zero():
    parts = SortedParts([np.zeros(0, np.float32), np.array([1.0, 2.0], np.float32)])
    assert parts.kth(1) == 2.0 and parts.size == 2
    assert SortedParts([]).size == 0


@pytest.mark.parametrize("workers", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("seed,levels", [(30, None), (31, 5)])
def test_the_split_over_threads_changes_no_rank(seed, levels, workers):
    _, _, maps, masks = random_case(seed, n=7, levels=levels)
    one, w_one = pixel_ranks.rank_pixels(maps, masks, workers=1)
    many, w_many = pixel_ranks.rank_pixels(maps, masks, workers=workers)
    assert len(many.neg.parts) == min(workers, len(maps))  # at most one range per image
    assert np.array_equal(one.pos, many.pos) and np.array_equal(w_one, w_many)
    assert np.array_equal(one.neg_below, many.neg_below) and np.array_equal(one.neg_upto, many.neg_upto)
    assert binned_pro(one, w_one) == binned_pro(many, w_many)


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_metrics_are_identical_for_any_number_of_threads(monkeypatch, workers):
    scores, labels, maps, masks = random_case(32, n=9, levels=9)
    monkeypatch.setattr(pixel_ranks, "pixel_workers", lambda: 1)
    reference = compute_metrics(scores, labels, maps, masks, extra_pro_limits=(0.05,))
    monkeypatch.setattr(pixel_ranks, "pixel_workers", lambda: workers)
    assert compute_metrics(scores, labels, maps, masks, extra_pro_limits=(0.05,)) == reference
    assert reference["PRO"] == pytest.approx(slow_pro(maps, masks), abs=1e-9)
    assert reference["PRO@0.05"] == pytest.approx(slow_pro(maps, masks, 0.05), abs=1e-9)
