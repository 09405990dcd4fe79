"""The pixel half of the suite's one sort: defect pixels sorted with their PRO weights, normal pixels sorted, and
every defect pixel's rank among the normal ones (`RankedScores`), on the CPU cores or on a torch device.

On the CPU the images are split into one contiguous range per core; each thread selects its range's normal and
defect pixels, sorts its normal pixels and ranks all defect pixels among them. numpy releases the GIL in boolean
indexing, sorting and searchsorted, so the ranges run side by side; ranks are counts, and counts add up over the
ranges, so the result is the same integers whatever the split (exact, no merge). Measured with
`experiments/bench_metrics.py` (see the experiments README): selection, sort and ranks were 2.7 s of the suite's
3.4 s on one core.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise

import numpy as np
from scipy import ndimage

from anomaly_zoo.metrics.curves import RankedScores, SortedParts, ranks_in, stable_argsort

# 8-connectivity, as in the MVTec AD evaluation code.
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
#: more threads than this gain little: the selection is bound by memory bandwidth
MAX_WORKERS = 8


def region_sizes(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """One 2-D boolean mask's defect regions (8-connected): per defect pixel, in C order of mask[mask], the size
    of its region; and the number of regions."""
    rows = np.flatnonzero(mask.any(1))
    if not rows.size:
        return np.zeros(0, dtype=np.int64), 0
    # Labelled within the defects' bounding box: the same regions and the same C order of the defect pixels, at a
    # fraction of the cost (masks are mostly empty; 1.0 s -> 0.4 s on the metric benchmark's maps).
    cols = np.flatnonzero(mask[rows[0] : rows[-1] + 1].any(0))
    box = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    labelled, n_regions = ndimage.label(box, structure=EIGHT_CONNECTED)
    sizes = np.bincount(labelled.ravel(), minlength=n_regions + 1)
    return sizes[labelled[box]], int(n_regions)


def region_weights(masks: np.ndarray) -> np.ndarray:
    """Per defect pixel (in C order of masks[masks]) the weight 1 / (region size * number of regions)."""
    weights: list[np.ndarray] = []
    n_regions_total = 0
    for mask in masks:
        sizes, n_regions = region_sizes(mask)
        if n_regions:
            weights.append(1.0 / sizes)
            n_regions_total += n_regions
    if not weights:
        return np.zeros(0, dtype=np.float64)
    return np.concatenate(weights) / n_regions_total


def pixel_workers() -> int:
    """The threads the ranking uses: the cores this process may run on, at most MAX_WORKERS."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(MAX_WORKERS, cores))


def _as_bool(masks: np.ndarray) -> np.ndarray:
    # masks hold only 0 and 1 (checked): a one-byte integer array is read as booleans without a copy
    return masks.view(bool) if masks.dtype.itemsize == 1 and masks.dtype.kind in "biu" else masks.astype(bool)


def rank_pixels(maps: np.ndarray, masks: np.ndarray, workers: int | None = None) -> tuple[RankedScores, np.ndarray]:
    """Defect-pixel scores (sorted, stable) with their PRO weights, the normal-pixel scores sorted (one part per
    thread), and the defect pixels' ranks among them. `workers`: threads (default `pixel_workers()`)."""
    masks_b = _as_bool(masks)
    maps_f = maps.astype(np.float32, copy=False)
    n = len(maps_f)
    workers = max(1, min(workers or pixel_workers(), n))
    bounds = np.linspace(0, n, workers + 1).round().astype(int)
    ranges = [slice(a, b) for a, b in pairwise(bounds.tolist()) if b > a] or [slice(0, 0)]

    def select(images: slice) -> tuple[np.ndarray, np.ndarray]:
        part_maps, part_masks = maps_f[images], masks_b[images]
        pos = part_maps[part_masks]  # boolean indexing copies in C order: the order region_weights uses
        # The normal pixels: a plain copy with the defect pixels set to +inf (maps are finite, checked), sorted,
        # the +inf tail cut off. Boolean indexing of the ~98 % normal pixels took 0.9 s on the metric benchmark's
        # 113 M, the copy and the assignment 0.1 s (warm pages).
        neg = part_maps.reshape(-1).copy()
        neg[part_masks.reshape(-1)] = np.inf
        neg.sort()  # in place: the one large sort, a part per thread
        return pos, neg[: neg.size - pos.size]

    with ThreadPoolExecutor(len(ranges)) as pool:
        selected = pool.map(select, ranges)
        weights = region_weights(masks_b)  # the labelling, in this thread meanwhile
        pos_parts, negs = zip(*selected, strict=True)
        pos = np.concatenate(pos_parts)
        order = stable_argsort(pos)
        pos, weights = pos[order], weights[order]
        del order
        ranks = list(pool.map(lambda neg: ranks_in(neg, pos), negs))
    below, upto = ranks[0]
    for more_below, more_upto in ranks[1:]:  # counts add up over the parts
        below, upto = below + more_below, upto + more_upto
    return RankedScores(pos, SortedParts(list(negs)), below, upto), weights


def rank_pixels_torch(maps, masks) -> tuple[RankedScores, np.ndarray]:
    """`rank_pixels` with the selection, sorts and searches on the tensors' device; the same numbers come back.

    Sorted float32 values and searchsorted counts are exact whatever does them, and a stable sort's permutation
    is unique, so the result equals `rank_pixels`'s (+0.0 added first: a radix sort orders -0.0 before +0.0,
    numpy's comparison sort keeps them in input order). The connected-component labelling of the masks runs on
    the CPU while the device sorts (kernels are queued asynchronously).
    """
    import torch

    masks_b = masks.bool()
    masks_host = masks_b.cpu().numpy()
    maps_f = maps.float() + 0.0
    pos, neg = maps_f[masks_b], maps_f[~masks_b]  # masked selection is in C order, as numpy's (waits for a count)
    pos, order = torch.sort(pos, stable=True)
    neg = torch.sort(neg).values
    neg_below = torch.searchsorted(neg, pos, side="left")
    neg_upto = torch.searchsorted(neg, pos, side="right")
    weights = region_weights(masks_host)[order.cpu().numpy()]
    ranked = RankedScores(
        pos.cpu().numpy(), SortedParts([neg.cpu().numpy()]), neg_below.cpu().numpy(), neg_upto.cpu().numpy()
    )
    return ranked, weights
