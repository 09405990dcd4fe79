"""The one metric suite every method is scored with (spec: shared/spec/metrics.md)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from anomaly_zoo.metrics.curves import RankedScores, ap_and_f1max, auroc, pro_auc

METRIC_NAMES: tuple[str, ...] = ("I-AUROC", "I-AP", "I-F1max", "P-AUROC", "P-AP", "P-F1max", "PRO")

# 8-connectivity, as in the MVTec AD evaluation code.
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def _as_numpy(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, any device; numpy has no bfloat16
        x = x.detach().cpu()
        x = (x.float() if x.dtype.is_floating_point and x.element_size() < 4 else x).numpy()
    arr = np.asarray(x)
    if arr.dtype == object:
        raise TypeError(f"{name}: expected a numeric array or tensor, got objects")
    return arr


def _check_inputs(scores: np.ndarray, labels: np.ndarray, maps: np.ndarray, masks: np.ndarray) -> None:
    if scores.ndim != 1 or labels.shape != scores.shape:
        raise ValueError(
            f"scores and labels must both have shape (N,); got scores {scores.shape} and labels {labels.shape}"
        )
    if maps.ndim != 3 or masks.shape != maps.shape:
        raise ValueError(
            f"maps and masks must both have shape (N, H, W); got maps {maps.shape} and masks {masks.shape}. "
            "Resize the anomaly maps to the mask resolution before scoring."
        )
    if maps.shape[0] != scores.shape[0]:
        raise ValueError(f"got {scores.shape[0]} image scores but {maps.shape[0]} anomaly maps")
    for name, arr in (("scores", scores), ("maps", maps)):
        # A float64 sum is finite iff every value is (float32 maps cannot overflow it): no n-sized temporary.
        if not np.isfinite(np.sum(arr, dtype=np.float64)):
            bad = int((~np.isfinite(arr)).sum())
            raise ValueError(
                f"{name} contain {bad} NaN/inf values; the method produced invalid output "
                "(check for divisions by zero or fp16 overflow)"
            )
    for name, arr in (("labels", labels), ("masks", masks)):
        if arr.size and not _is_binary(arr):
            raise ValueError(f"{name} must contain only 0 and 1; found values {np.unique(arr)[:10].tolist()}")
    if labels.size and not np.array_equal(labels.astype(bool), masks.reshape(len(masks), -1).any(axis=1)):
        # Not fatal (e.g. logical defects without pixel annotations), but worth a warning.
        warnings.warn(
            "image labels do not match the masks (defect images with empty masks or the reverse)", stacklevel=3
        )


def _is_binary(arr: np.ndarray) -> bool:
    if arr.dtype == bool:
        return True
    if np.issubdtype(arr.dtype, np.integer):
        return bool(arr.min() >= 0 and arr.max() <= 1)  # two passes, no temporary
    return bool(np.all((arr == 0) | (arr == 1)))


def _region_weights(masks: np.ndarray) -> np.ndarray:
    """Per defect pixel (in C order of masks[masks]) the weight 1 / (region size * number of regions)."""
    weights: list[np.ndarray] = []
    sizes_all: list[np.ndarray] = []
    for mask in masks:
        if not mask.any():
            continue
        labelled, n_regions = ndimage.label(mask, structure=_EIGHT_CONNECTED)
        sizes = np.bincount(labelled.ravel(), minlength=n_regions + 1)
        weights.append(1.0 / sizes[labelled[mask]])
        sizes_all.append(sizes[1:])
    if not weights:
        return np.zeros(0, dtype=np.float64)
    n_regions_total = sum(len(s) for s in sizes_all)
    return np.concatenate(weights) / n_regions_total


def compute_metrics(scores: Any, labels: Any, maps: Any, masks: Any) -> dict[str, float]:
    """Score one set of predictions. Returns exactly the keys in `METRIC_NAMES`.

    scores (N,) image scores, labels (N,) in {0,1}, maps (N,H,W) anomaly maps, masks (N,H,W) in {0,1};
    numpy arrays or torch tensors on any device. Values are exact (no threshold binning) and equal
    scikit-learn's where it defines them. A metric that is undefined for the input (e.g. only normal
    images) is NaN with a warning.
    """
    scores_np = _as_numpy(scores, "scores").astype(np.float64)
    labels_np = _as_numpy(labels, "labels")
    maps_np = _as_numpy(maps, "maps")
    masks_np = _as_numpy(masks, "masks")
    _check_inputs(scores_np, labels_np, maps_np, masks_np)
    labels_b = labels_np.astype(bool)
    masks_b = masks_np.astype(bool)
    maps_f = maps_np.astype(np.float32, copy=False)

    results: dict[str, float] = {}
    image = RankedScores.from_sorted(np.sort(scores_np[labels_b]), np.sort(scores_np[~labels_b]))
    results["I-AUROC"] = auroc(image)
    results["I-AP"], results["I-F1max"] = ap_and_f1max(image)

    pos = maps_f[masks_b]  # boolean indexing copies, in C order: the order _region_weights uses
    order = np.argsort(pos, kind="stable")  # defect pixels are few: an index is cheap here
    pos, weights = pos[order], _region_weights(masks_b)[order]
    del order
    neg = maps_f[~masks_b]
    neg.sort()  # in place: the one large sort
    pixel = RankedScores.from_sorted(pos, neg)
    results["P-AUROC"] = auroc(pixel)
    results["P-AP"], results["P-F1max"] = ap_and_f1max(pixel)
    results["PRO"] = pro_auc(pixel, weights)

    undefined = [k for k, v in results.items() if math.isnan(v)]
    if undefined:
        warnings.warn(
            f"metrics {undefined} are undefined for this input (it needs both normal and defective "
            f"images/pixels: {int(labels_b.sum())} defective of {labels_b.size} images, "
            f"{int(masks_b.sum())} defect pixels); they are reported as NaN",
            stacklevel=2,
        )
    return results


def compute_category_metrics(
    scores: Any, labels: Any, maps: Any, masks: Any, categories: Sequence[str]
) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Metrics per category plus their unweighted mean over categories (as both papers report).

    Returns (per_category, mean). Categories keep their first-seen order.
    """
    scores_np, labels_np = _as_numpy(scores, "scores"), _as_numpy(labels, "labels")
    cats = np.asarray(list(categories))
    if cats.shape[0] != scores_np.shape[0]:
        raise ValueError(f"got {cats.shape[0]} category names for {scores_np.shape[0]} images")
    per_category: dict[str, dict[str, float]] = {}
    for category in dict.fromkeys(cats.tolist()):
        idx = np.flatnonzero(cats == category)
        per_category[category] = compute_metrics(scores_np[idx], labels_np[idx], _take(maps, idx), _take(masks, idx))
    return per_category, mean_over_categories(per_category)


def _take(arr: Any, idx: np.ndarray) -> np.ndarray:
    arr_np = _as_numpy(arr, "array")
    # Contiguous index ranges (the usual case: test sets are grouped by category) are views, not copies.
    if idx.size and idx[-1] - idx[0] + 1 == idx.size:
        return arr_np[idx[0] : idx[-1] + 1]
    return arr_np[idx]


def mean_over_categories(per_category: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Unweighted mean over categories; a metric undefined in some category averages the others."""
    mean: dict[str, float] = {}
    for name in METRIC_NAMES:
        values = [row[name] for row in per_category.values() if not math.isnan(row[name])]
        mean[name] = float(np.mean(values)) if values else math.nan
    return mean
