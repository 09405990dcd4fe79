"""The metric suite against scikit-learn and an independent, slow PRO reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from anomaly_zoo.metrics import METRIC_NAMES, compute_category_metrics, compute_metrics


def slow_pro(maps: np.ndarray, masks: np.ndarray, fpr_limit: float = 0.3) -> float:
    """PRO by brute force: every distinct threshold, regions via scipy labels, trapezoid + interpolated end."""
    structure = np.ones((3, 3))
    regions = []
    for i, m in enumerate(masks):
        lab, n = ndimage.label(m, structure=structure)
        regions += [(i, lab == k) for k in range(1, n + 1)]
    normal = masks == 0
    points = [(0.0, 0.0)]
    for t in np.unique(maps)[::-1]:
        pred = maps >= t
        fpr = (pred & normal).sum() / normal.sum()
        pro = np.mean([(pred[i] & r).sum() / r.sum() for i, r in regions])
        points.append((fpr, pro))
    xs, ys = np.array(points).T
    area = 0.0
    for k in range(1, len(xs)):
        x0, x1, y0, y1 = xs[k - 1], xs[k], ys[k - 1], ys[k]
        if x0 >= fpr_limit:
            break
        if x1 > fpr_limit:
            y1 = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
            x1 = fpr_limit
        area += (x1 - x0) * (y0 + y1) / 2
    return area / fpr_limit


def sklearn_f1max(y, s) -> float:
    p, r, _ = precision_recall_curve(y, s)
    f1 = np.divide(2 * p * r, p + r, out=np.zeros_like(p), where=(p + r) > 0)
    return float(f1.max())


def random_case(seed: int, n: int = 6, size: int = 24, levels: int | None = None):
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), dtype=np.uint8)
    for i in range(n // 2, n):  # the second half is defective, with 1-3 blobs (some touching diagonally)
        for _ in range(rng.integers(1, 4)):
            y, x = rng.integers(2, size - 6, size=2)
            masks[i, y : y + rng.integers(2, 5), x : x + rng.integers(2, 5)] = 1
    masks[n - 1, 0, 0] = masks[n - 1, 1, 1] = 1  # diagonal neighbours: one region under 8-connectivity
    maps = rng.random((n, size, size)).astype(np.float32) + masks * rng.uniform(0.1, 0.8)
    if levels:  # quantise to force many ties
        maps = np.floor(maps * levels) / levels
    labels = masks.reshape(n, -1).any(1).astype(int)
    scores = maps.reshape(n, -1).max(1)
    return scores, labels, maps.astype(np.float32), masks


@pytest.mark.parametrize("seed,levels", [(0, None), (1, 7), (2, 3), (3, 20)])
def test_values_match_sklearn_and_slow_pro(seed, levels):
    scores, labels, maps, masks = random_case(seed, levels=levels)
    if levels:
        scores = np.floor(scores * 2) / 2  # ties in image scores too
    out = compute_metrics(scores, labels, maps, masks)
    assert list(out) == list(METRIC_NAMES)
    y, s = masks.ravel(), maps.ravel()
    assert out["I-AUROC"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert out["I-AP"] == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert out["I-F1max"] == pytest.approx(sklearn_f1max(labels, scores), abs=1e-12)
    assert out["P-AUROC"] == pytest.approx(roc_auc_score(y, s), abs=1e-9)
    assert out["P-AP"] == pytest.approx(average_precision_score(y, s), abs=1e-9)
    assert out["P-F1max"] == pytest.approx(sklearn_f1max(y, s), abs=1e-9)
    assert out["PRO"] == pytest.approx(slow_pro(maps, masks), abs=1e-9)


def test_perfect_map_scores_one_and_inverted_map_scores_low():
    _, labels, _, masks = random_case(5)
    maps = masks.astype(np.float32)
    scores = labels.astype(float)
    assert all(v == pytest.approx(1.0) for v in compute_metrics(scores, labels, maps, masks).values())
    inv = compute_metrics(-scores, labels, -maps, masks)
    assert inv["I-AUROC"] == 0.0 and inv["P-AUROC"] == 0.0 and inv["PRO"] == 0.0


def test_constant_map_hand_computed():
    # 2 normal + 2 defective images, all scores equal: AUROC 1/2, AP = prevalence, F1max = 2P/(2P+N).
    masks = np.zeros((4, 4, 4), dtype=np.uint8)
    masks[2, :2, :2] = 1
    masks[3, 0, :] = 1
    maps = np.full(masks.shape, 0.3, dtype=np.float32)
    out = compute_metrics(np.zeros(4), np.array([0, 0, 1, 1]), maps, masks)
    assert out["I-AUROC"] == 0.5 and out["P-AUROC"] == 0.5
    assert out["I-AP"] == 0.5 and out["P-AP"] == pytest.approx(8 / 64)
    assert out["P-F1max"] == pytest.approx(2 * 8 / (2 * 8 + 56))
    # One threshold: FPR jumps 0 → 1 with PRO 1; interpolated at 0.3 the trapezoid is 0.3*0.3/2 → 0.15.
    assert out["PRO"] == pytest.approx(0.15)


def test_torch_inputs_equal_numpy_inputs():
    scores, labels, maps, masks = random_case(7)
    a = compute_metrics(scores, labels, maps, masks)
    b = compute_metrics(
        torch.from_numpy(scores), torch.from_numpy(labels), torch.from_numpy(maps), torch.from_numpy(masks)
    )
    assert a == b


def test_single_class_is_nan_with_warning():
    masks = np.zeros((3, 8, 8), dtype=np.uint8)
    with pytest.warns(UserWarning, match="undefined"):
        out = compute_metrics(np.arange(3.0), np.zeros(3), np.random.rand(3, 8, 8), masks)
    assert all(math.isnan(out[k]) for k in METRIC_NAMES)


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda s, y, m, k: (s, y, m[:, :5], k), r"maps \(6, 5, 24\).*masks \(6, 24, 24\)"),
        (lambda s, y, m, k: (s[:4], y, m, k), r"scores \(4,\) and labels \(6,\)"),
        (lambda s, y, m, k: (s, y, np.where(m > 0.9, np.nan, m), k), "NaN/inf"),
        (lambda s, y, m, k: (s, y, m, k * 2), "only 0 and 1"),
    ],
)
def test_bad_input_errors_name_the_problem(change, match):
    with pytest.raises(ValueError, match=match):
        compute_metrics(*change(*random_case(3)))


def test_per_category_and_unweighted_mean():
    parts = [random_case(s) for s in (10, 11)]
    scores, labels, maps, masks = (np.concatenate(x) for x in zip(*parts, strict=True))
    per_cat, mean = compute_category_metrics(scores, labels, maps, masks, ["a"] * 6 + ["b"] * 6)
    assert per_cat["a"] == compute_metrics(*parts[0]) and per_cat["b"] == compute_metrics(*parts[1])
    for k in METRIC_NAMES:
        assert mean[k] == pytest.approx((per_cat["a"][k] + per_cat["b"][k]) / 2)
    # tensors, and categories interleaved (rows taken as copies, not views): the same rows
    order = np.r_[0:12:2, 1:12:2]
    interleaved = [["a", "b"][i // 6] for i in order]
    per_cat_t, _ = compute_category_metrics(
        torch.from_numpy(scores[order]), torch.from_numpy(labels[order]), torch.from_numpy(maps[order]),
        torch.from_numpy(masks[order]), interleaved,
    )  # fmt: skip
    assert per_cat_t == per_cat


@pytest.mark.parametrize("limit", [0.05, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("seed,levels", [(20, None), (21, 4), (22, 11)])
def test_pro_at_other_fpr_limits_matches_brute_force(seed, limit, levels):
    from anomaly_zoo.metrics.curves import RankedScores, pro_auc
    from anomaly_zoo.metrics.pixel_ranks import region_weights as _region_weights

    _, _, maps, masks = random_case(seed, n=5, size=10, levels=levels)  # 10x10: FPR steps hit 0.3 exactly
    b = masks.astype(bool)
    pos, w = maps[b], _region_weights(b)
    order = np.argsort(pos, kind="stable")
    ranked = RankedScores.from_sorted(pos[order], np.sort(maps[~b]))
    assert pro_auc(ranked, w[order], limit) == pytest.approx(slow_pro(maps, masks, limit), abs=1e-12)


def test_device_path_gives_identical_values():
    scores, labels, maps, masks = random_case(12, levels=16)  # many ties
    maps[0, :3] = -0.0  # signed zeros and ties: the torch sort must order them as numpy's stable sort does
    maps[1, :3] = 0.0
    reference = compute_metrics(scores, labels, maps, masks)
    assert compute_metrics(scores, labels, maps, masks, device="cpu") == reference
    assert compute_metrics(scores, labels, torch.from_numpy(maps), torch.from_numpy(masks), device="cpu") == reference
    with pytest.raises(ValueError, match="NaN/inf"):
        compute_metrics(scores, labels, np.where(maps > 0.9, np.inf, maps), masks, device="cpu")
    with pytest.raises(ValueError, match="only 0 and 1"):
        compute_metrics(scores, labels, maps, masks * 2, device="cpu")
