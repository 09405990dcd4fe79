"""The one metric suite every method is scored with: the seven metrics the OneNIP and DIVAD papers report."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from anomaly_zoo.metrics.curves import PRO_FPR_LIMIT, RankedScores, ap_and_f1max, auroc, pro_auc
from anomaly_zoo.metrics.memory import category_rows
from anomaly_zoo.metrics.pixel_ranks import rank_pixels, rank_pixels_torch
from anomaly_zoo.metrics.protocols import binned_pro, flipped, get_protocol

METRIC_NAMES: tuple[str, ...] = ("I-AUROC", "I-AP", "I-F1max", "P-AUROC", "P-AP", "P-F1max", "PRO")


def _as_numpy(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, any device; numpy has no bfloat16
        x = x.detach().cpu()
        x = (x.float() if x.dtype.is_floating_point and x.element_size() < 4 else x).numpy()
    arr = np.asarray(x)
    if arr.dtype == object:
        raise TypeError(f"{name}: expected a numeric array or tensor, got objects")
    return arr


def _check_inputs(scores: np.ndarray, labels: np.ndarray, maps: Any, masks: Any) -> None:
    """Shapes and values. maps and masks: numpy arrays, or torch tensors checked where they are (no copy)."""
    if scores.ndim != 1 or labels.shape != scores.shape:
        raise ValueError(
            f"scores and labels must both have shape (N,); got scores {scores.shape} and labels {labels.shape}"
        )
    if maps.ndim != 3 or tuple(masks.shape) != tuple(maps.shape):
        raise ValueError(
            f"maps and masks must both have shape (N, H, W); got maps {tuple(maps.shape)} and masks "
            f"{tuple(masks.shape)}. Resize the anomaly maps to the mask resolution before scoring."
        )
    if maps.shape[0] != scores.shape[0]:
        raise ValueError(f"got {scores.shape[0]} image scores but {maps.shape[0]} anomaly maps")
    for name, arr in (("scores", scores), ("maps", maps)):
        # A float64 sum is finite iff every value is (float32 maps cannot overflow it): no n-sized temporary.
        if not bool(_xp(arr).isfinite(arr.sum(dtype=_xp(arr).float64))):
            bad = int((~_xp(arr).isfinite(arr)).sum())
            raise ValueError(
                f"{name} contain {bad} NaN/inf values; the method produced invalid output "
                "(check for divisions by zero or fp16 overflow)"
            )
    for name, arr in (("labels", labels), ("masks", masks)):
        if len(arr) and not _is_binary(arr):
            raise ValueError(f"{name} must contain only 0 and 1; found values {_xp(arr).unique(arr)[:10].tolist()}")
    per_image = masks.reshape(len(masks), -1).any(1)
    if labels.size and not np.array_equal(labels.astype(bool), _as_numpy(per_image, "masks")):
        # Not fatal (e.g. logical defects without pixel annotations), but worth a warning.
        warnings.warn(
            "image labels do not match the masks (defect images with empty masks or the reverse)", stacklevel=3
        )


def _xp(arr: Any):
    """The array's module: numpy, or torch for tensors (same names for what the checks use)."""
    if hasattr(arr, "detach"):
        import torch

        return torch
    return np


def _is_binary(arr: Any) -> bool:
    if str(arr.dtype) in ("bool", "torch.bool"):
        return True
    if not (arr.dtype.is_floating_point if hasattr(arr, "detach") else np.issubdtype(arr.dtype, np.floating)):
        return bool(arr.min() >= 0) and bool(arr.max() <= 1)  # two passes, no temporary
    return bool(((arr == 0) | (arr == 1)).all())


def pro_key(fpr_limit: float) -> str:
    """The results key of the AU-PRO up to another FPR limit than the suite's: "PRO@0.05"."""
    return f"PRO@{fpr_limit:g}"


def _check_limits(pro_fpr_limit: float, extra_pro_limits: Sequence[float]) -> tuple[float, ...]:
    for limit in (pro_fpr_limit, *extra_pro_limits):
        if not 0.0 < float(limit) <= 1.0:
            raise ValueError(f"PRO integration limit {limit} must be in (0, 1]")
    return tuple(float(x) for x in extra_pro_limits)


def compute_metrics(
    scores: Any,
    labels: Any,
    maps: Any,
    masks: Any,
    device: Any = None,
    protocol: str = "exact",
    pro_fpr_limit: float = PRO_FPR_LIMIT,
    extra_pro_limits: Sequence[float] = (),
) -> dict[str, float]:
    """Score one set of predictions. Returns the keys in `METRIC_NAMES` (plus one per `extra_pro_limits`).

    scores (N,) image scores, labels (N,) in {0,1}, maps (N,H,W) anomaly maps, masks (N,H,W) in {0,1};
    numpy arrays or torch tensors on any device. Values are exact (no threshold binning) and equal
    scikit-learn's where it defines them. A metric that is undefined for the input (e.g. only normal
    images) is NaN with a warning.

    `device` (e.g. "cuda"): the pixel-level checks, selection, sorting and ranking run with torch on that device
    (maps already there are not copied to the host); everything after the ranking is the same numpy code on the
    same sorted arrays, so the values are identical to `device=None` (all numpy, on the CPU).

    `protocol`: "exact" (the definitions above), or an official evaluation's way ("onenip_official",
    "divad_official"; `anomaly_zoo.metrics.protocols`): AUROC below 0.5 flipped, image labels from the masks, and
    for DIVAD its 200-threshold PRO.

    `pro_fpr_limit`: the FPR up to which "PRO" integrates (default 0.3, as MVTec AD). `extra_pro_limits` (e.g.
    (0.05,), MVTec AD 2's AU-PRO): also returned as `pro_key(limit)` ("PRO@0.05"), from the same sorted arrays.
    A binned (official) PRO has its own limit and ignores both.
    """
    spec = get_protocol(protocol)
    extra = _check_limits(pro_fpr_limit, extra_pro_limits)
    scores_np = _as_numpy(scores, "scores").astype(np.float64)
    labels_np = _as_numpy(labels, "labels")
    if device is None:
        maps, masks = _as_numpy(maps, "maps"), _as_numpy(masks, "masks")
    else:
        import torch

        maps, masks = torch.as_tensor(maps, device=device), torch.as_tensor(masks, device=device)
    if spec.labels_from_masks:
        labels_np = _labels_from_masks(labels_np, masks, spec.name)
    _check_inputs(scores_np, labels_np, maps, masks)
    labels_b = labels_np.astype(bool)

    results: dict[str, float] = {}
    image = RankedScores.from_sorted(np.sort(scores_np[labels_b]), np.sort(scores_np[~labels_b]))
    results["I-AUROC"] = auroc(image)
    results["I-AP"], results["I-F1max"] = ap_and_f1max(image)

    pixel, weights = rank_pixels(maps, masks) if device is None else rank_pixels_torch(maps, masks)
    results["P-AUROC"] = auroc(pixel)
    results["P-AP"], results["P-F1max"] = ap_and_f1max(pixel)
    results["PRO"] = binned_pro(pixel, weights) if spec.binned_pro else pro_auc(pixel, weights, pro_fpr_limit)
    for limit in extra:  # the exact PRO at another limit: the same ranks, no second sort
        results[pro_key(limit)] = pro_auc(pixel, weights, limit)
    if spec.flip_auroc:
        results["I-AUROC"], results["P-AUROC"] = flipped(results["I-AUROC"]), flipped(results["P-AUROC"])

    undefined = [k for k, v in results.items() if math.isnan(v)]
    if undefined:
        warnings.warn(
            f"metrics {undefined} are undefined for this input (it needs both normal and defective "
            f"images/pixels: {int(labels_b.sum())} defective of {labels_b.size} images, "
            f"{int(pixel.pos.size)} defect pixels); they are reported as NaN",
            stacklevel=2,
        )
    return results


def _labels_from_masks(labels: np.ndarray, masks: Any, protocol: str) -> np.ndarray:
    """An image is defective when its mask has a defect pixel: how both official evaluations label images."""
    from_masks = _as_numpy(masks.reshape(len(masks), -1).any(1), "masks").astype(labels.dtype if labels.size else int)
    if labels.shape == from_masks.shape and not np.array_equal(labels.astype(bool), from_masks.astype(bool)):
        warnings.warn(
            f"protocol {protocol}: image labels are taken from the masks, as the official evaluation does; "
            f"{int((labels.astype(bool) != from_masks.astype(bool)).sum())} image(s) get another label than the "
            "dataset gives them",
            stacklevel=3,
        )
    return from_masks


def compute_category_metrics(
    scores: Any,
    labels: Any,
    maps: Any,
    masks: Any,
    categories: Sequence[str],
    protocol: str = "exact",
    pro_fpr_limit: float = PRO_FPR_LIMIT,
    extra_pro_limits: Sequence[float] = (),
) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Metrics per category plus their unweighted mean over categories (as both papers and both official
    evaluations take it: `np.mean` over the classes).

    Returns (per_category, mean). Categories keep their first-seen order. `protocol`, `pro_fpr_limit`,
    `extra_pro_limits`: as `compute_metrics`.
    """
    get_protocol(protocol)  # an unknown name fails before any work
    _check_limits(pro_fpr_limit, extra_pro_limits)
    scores_np, labels_np = _as_numpy(scores, "scores"), _as_numpy(labels, "labels")
    cats = np.asarray(list(categories))
    if cats.shape[0] != scores_np.shape[0]:
        raise ValueError(f"got {cats.shape[0]} category names for {scores_np.shape[0]} images")
    # tensors (any device) to numpy once, not once per category; a memory-mapped buffer stays mapped
    maps = maps if isinstance(maps, np.memmap) else _as_numpy(maps, "maps")
    masks = masks if isinstance(masks, np.memmap) else _as_numpy(masks, "masks")
    per_category: dict[str, dict[str, float]] = {}
    for category in dict.fromkeys(cats.tolist()):
        idx = np.flatnonzero(cats == category)
        with category_rows(maps, idx) as maps_c, category_rows(masks, idx) as masks_c:
            per_category[category] = compute_metrics(
                scores_np[idx],
                labels_np[idx],
                maps_c,
                masks_c,
                protocol=protocol,
                pro_fpr_limit=pro_fpr_limit,
                extra_pro_limits=extra_pro_limits,
            )
    return per_category, mean_over_categories(per_category)


def mean_over_categories(
    per_category: Mapping[str, Mapping[str, float]], metrics: Sequence[str] = METRIC_NAMES
) -> dict[str, float]:
    """Unweighted mean over categories; a metric undefined in some category averages the others.

    `metrics` first, then every other key of the rows (e.g. "PRO@0.05" where asked for).
    """
    names = dict.fromkeys([*metrics, *(k for row in per_category.values() for k in row)])
    mean: dict[str, float] = {}
    for name in names:
        values = [row[name] for row in per_category.values() if name in row and not math.isnan(row[name])]
        mean[name] = float(np.mean(values)) if values else math.nan
    return mean
