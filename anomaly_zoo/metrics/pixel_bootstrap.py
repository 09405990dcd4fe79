"""Bootstrap intervals of the pixel metrics (P-AUROC, P-AP, P-F1max, PRO) with every resample scored from one
sorting of the maps.

A resample reweights images (`bootstrap.stratified_resamples`), so a pixel's weight is its image's count. Every
pixel statistic of the suite needs, per defect pixel p, the (weighted) number of normal pixels below it (and tied
with it). Per image j that number is C[p, j], fixed for all resamples; the weighted count for resample b is then
`C @ w_b`. So: the normal pixels are sorted once per image (the same n log n as the suite's one sort) and C is one
`searchsorted` pass of the sorted defect pixels per image. Then, per resample:
- P-AUROC's numerator is the bilinear form w_b^T A w_b, A = C summed per defect image (n x n, summed once);
- P-AP and P-F1max need the curve at every distinct defect value: C @ W and cumulative sums, a block of values at
  a time from the highest down (memory stays bounded);
- PRO's FPR limit is crossed at a weighted quantile v*_b of the normal pixels (bisection on the per-image sorted
  arrays, all resamples together); the defect pixels above every resample's v* enter as a bilinear form again,
  only the band between the lowest and the highest v* is summed per resample.
With integer counts every value equals `compute_metrics` on the explicitly resampled images (tests check it).

Why not per resample through the suite: each call sorts all normal pixels again (~10 s on MVTec AD's test split
on 2 cores); 200 resamples would take over half an hour.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from anomaly_zoo.metrics.curves import PRO_FPR_LIMIT
from anomaly_zoo.metrics.pixel_ranks import region_sizes

PIXEL_METRICS: tuple[str, ...] = ("P-AUROC", "P-AP", "P-F1max", "PRO")
#: float32 matrix products are exact for integer sums below 2^24; above, float64
_FLOAT32_EXACT = 2**24


class PixelResampler:
    """One category's maps, prepared once; `metrics(counts)` scores any number of resamples (rows of counts)."""

    def __init__(self, maps: np.ndarray, masks: np.ndarray) -> None:
        from scipy import sparse

        maps = np.asarray(maps, dtype=np.float32)
        masks = np.asarray(masks).astype(bool)
        self.n = len(maps)
        pos_values, pos_image, pos_region_size = [], [], []
        self.negatives: list[np.ndarray] = []
        self.regions_per_image = np.zeros(self.n, dtype=np.int64)
        for i in range(self.n):
            self.negatives.append(np.sort(maps[i][~masks[i]]))
            if masks[i].any():
                sizes, count = region_sizes(masks[i])
                pos_values.append(maps[i][masks[i]])
                pos_image.append(np.full(sizes.size, i))
                pos_region_size.append(sizes)
                self.regions_per_image[i] = count
        self.n_neg = np.array([a.size for a in self.negatives], dtype=np.float64)
        self.n_pos = np.zeros(self.n)
        if not pos_values:
            self.pos = np.zeros(0, dtype=np.float32)
            return
        values = np.concatenate(pos_values)
        order = np.argsort(values, kind="stable")
        self.pos = values[order]
        self.pos_image = np.concatenate(pos_image)[order]
        self.pos_region_size = np.concatenate(pos_region_size)[order].astype(np.float64)
        self.n_pos = np.bincount(self.pos_image, minlength=self.n).astype(np.float64)
        p = self.pos.size
        # Per defect pixel p and image j: image j's normal pixels strictly below p (dense: every pair counts) and
        # tied with it (sparse: ties are rare). One left `searchsorted` per image; the right one only where the
        # element found equals the value (measured: half of the set-up time of two full passes).
        self.exact32 = float(self.n_neg.sum()) < _FLOAT32_EXACT / 64  # room for resample counts up to 64
        self.below = np.empty((p, self.n), dtype=np.float32 if self.exact32 else np.float64)
        tie_rows, tie_cols, tie_counts = [], [], []
        for j, neg in enumerate(self.negatives):
            left = np.searchsorted(neg, self.pos, side="left")
            self.below[:, j] = left
            inside = left < neg.size
            hit = np.flatnonzero(inside)[neg[left[inside]] == self.pos[inside]]
            if hit.size:
                right = np.searchsorted(neg, self.pos[hit], side="right")
                tie_rows.append(hit)
                tie_cols.append(np.full(hit.size, j))
                tie_counts.append(right - left[hit])
        cat = lambda parts, dtype: np.concatenate(parts) if parts else np.zeros(0, dtype)  # noqa: E731
        self.tied = sparse.csr_matrix(
            (cat(tie_counts, np.int64).astype(np.float64), (cat(tie_rows, np.int64), cat(tie_cols, np.int64))),
            shape=(p, self.n),
        )
        # each defect pixel's image as a sparse (n, P) indicator: sums over an image's defect pixels are products
        self.image_of = sparse.csr_matrix((np.ones(p), (self.pos_image, np.arange(p))), shape=(self.n, p))
        # P-AUROC's numerator for image weights w is the bilinear form w^T A w, A[i, j] = sum over image i's defect
        # pixels of (image j's normals below + half those tied): n x n, whatever the number of resamples.
        self.auroc_form = self._image_sums(self.image_of, 0, p)
        # the same indicator weighted 1 / region size: PRO's per-pixel weights
        self.image_inv_size = sparse.csr_matrix((1.0 / self.pos_region_size, (self.pos_image, np.arange(p))),
                                                shape=(self.n, p))  # fmt: skip
        starts = np.flatnonzero(np.diff(self.pos, prepend=-np.inf) != 0)  # first index of each distinct value
        self.starts = starts
        # defect pixels per (distinct value, image): the tie groups' weights for any resample, sparse
        group = np.repeat(np.arange(starts.size), np.diff(np.append(starts, p)))
        self.group_of = (
            None
            if starts.size == p
            else sparse.csr_matrix((np.ones(p), (group, self.pos_image)), shape=(starts.size, self.n))
        )

    def _image_sums(self, indicator, lo: int, hi: int) -> np.ndarray:
        """(n, n): per image i, sum over its defect pixels p in [lo, hi) (weighted by `indicator`'s entries) of
        image j's normals below p plus half those tied with p."""
        part = indicator[:, lo:hi]
        out = np.asarray(part @ self.below[lo:hi].astype(np.float64, copy=False))
        return out + 0.5 * (part @ self.tied[lo:hi]).toarray()

    def _times_w(self, rows: slice | np.ndarray, w: np.ndarray, w32: np.ndarray | None) -> np.ndarray:
        """(rows, B) weighted normal pixels below each defect pixel in `rows`: integer sums, exact in float32
        below 2^24 (`w32` given only then)."""
        if w32 is not None:
            return (self.below[rows] @ w32).astype(np.float64)
        return self.below[rows].astype(np.float64, copy=False) @ w

    def metrics(self, counts: np.ndarray, fpr_limit: float = PRO_FPR_LIMIT, chunk: int = 4096) -> dict[str, np.ndarray]:
        """P-AUROC, P-AP, P-F1max and PRO for each row of `counts` (B, n): each image counted that often.
        The (defect pixels x resamples) work is done `chunk` distinct values at a time (memory stays bounded)."""
        w = np.atleast_2d(counts).astype(np.float64).T  # (n, B)
        b = w.shape[1]
        if self.pos.size == 0:
            return {m: np.full(b, np.nan) for m in PIXEL_METRICS}
        w32 = w.astype(np.float32) if self.exact32 and float(w.max(initial=0)) <= 64 else None
        n_pos, n_neg = self.n_pos @ w, self.n_neg @ w  # (B,)
        out: dict[str, np.ndarray] = {}
        with np.errstate(invalid="ignore", divide="ignore"):
            out["P-AUROC"] = ((self.auroc_form @ w) * w).sum(0) / (n_pos * n_neg)
            out["P-AP"], out["P-F1max"] = self._ap_f1(w, w32, n_pos, n_neg, chunk)
            out["PRO"] = self._pro(w, w32, n_neg, fpr_limit, chunk)
        undefined = (n_pos == 0) | (n_neg == 0)
        return {m: np.where(undefined, np.nan, v) for m, v in out.items()}

    def _ap_f1(self, w, w32, n_pos, n_neg, chunk) -> tuple[np.ndarray, np.ndarray]:
        """The suite's P-AP (precision summed over the distinct values, weighted by their defect weight) and
        P-F1max, over the distinct defect values from the highest down, carrying the true-positive weight."""
        starts = self.starts
        ap, f1 = np.zeros(w.shape[1]), np.zeros(w.shape[1])
        tp_above = np.zeros(w.shape[1])  # defect weight at values above the current chunk
        for hi in range(starts.size, 0, -chunk):
            lo = max(0, hi - chunk)
            # each distinct value's defect weight (every value distinct: a group is one pixel)
            step = w[self.pos_image[lo:hi]] if self.group_of is None else np.asarray(self.group_of[lo:hi] @ w)
            tp = np.cumsum(step[::-1], axis=0)[::-1]
            tp += tp_above
            tp_above = tp[0].copy()
            rows = slice(lo, hi) if self.group_of is None else starts[lo:hi]
            denominator = self._times_w(rows, w, w32)  # normal weight below each value
            np.subtract(n_neg, denominator, out=denominator)  # normal weight >= each value: false positives
            denominator += tp
            precision = np.divide(tp, denominator, out=np.zeros_like(tp), where=tp > 0)
            ap += np.einsum("ij,ij->j", step, precision)
            denominator += n_pos
            f1 = np.maximum(f1, 2 * (tp / denominator).max(0))
        return ap / n_pos, f1

    def _neg_above(self, t: np.ndarray, w: np.ndarray, side: Literal["left", "right"]) -> np.ndarray:
        """Weighted count of normal pixels > t (side="right") or >= t (side="left"), per resample (t: (B,))."""
        total = np.zeros(t.shape[0])
        for i, neg in enumerate(self.negatives):
            total += w[i] * (neg.size - np.searchsorted(neg, t.astype(neg.dtype), side=side))
        return total

    def _v_star(self, w: np.ndarray, n_neg: np.ndarray, fpr_limit: float) -> np.ndarray:
        """Per resample the normal value whose tie group crosses FPR = fpr_limit: the smallest normal value v with
        weighted count(> v) < limit·W (the suite's v* = the ceil(limit·N)-th largest normal value)."""
        values = np.unique(np.concatenate([neg for neg in self.negatives if neg.size]))  # candidates, ascending
        lo = np.zeros(w.shape[1], dtype=np.int64)
        hi = np.full(w.shape[1], values.size - 1)
        target = fpr_limit * n_neg
        while np.any(lo < hi):  # the first index whose count(> value) < target (count falls as the value rises)
            mid = (lo + hi) // 2
            ok = self._neg_above(values[mid], w, "right") < target
            hi = np.where(ok, mid, hi)
            lo = np.where(ok, lo, mid + 1)
        return values[lo]

    def _pro(self, w, w32, n_neg, fpr_limit, chunk) -> np.ndarray:
        """The suite's `pro_auc` with weights: each region weighs its image's count / (size · weighted number of
        regions); the area below the crossing is a weighted count over defect pixels, the crossing segment is
        interpolated at fpr_limit, the area divided by fpr_limit.

        The defect pixels above every resample's crossing v* enter as a bilinear form w^T Q w (Q: n x n, summed
        once); only the band of pixels between the lowest and the highest v* is summed per resample."""
        n_regions = self.regions_per_image @ w  # (B,)
        v_star = self._v_star(w, n_neg, fpr_limit)
        n_gt = self._neg_above(v_star, w, "right")  # weighted normals > v*
        n_ge = self._neg_above(v_star, w, "left")  # >= v*
        n_le = n_neg - n_gt
        k_gt = np.searchsorted(self.pos, v_star, side="right")  # defect pixels from k_gt on are > v*
        k_ge = np.searchsorted(self.pos, v_star, side="left")  # from k_ge on, >= v*
        band_lo, band_hi = int(k_ge.min()), int(k_gt.max())
        per_pixel = self.image_inv_size
        s_gt = np.asarray(per_pixel[:, band_hi:].sum(1)).ravel() @ w  # sum over p >= band_hi of w[image p] / size_p
        area = ((self._image_sums(per_pixel, band_hi, self.pos.size) @ w) * w).sum(0) - n_le * s_gt
        y0, y1 = s_gt.copy(), s_gt.copy()
        for lo in range(band_lo, band_hi, chunk):
            rows = slice(lo, min(band_hi, lo + chunk))
            weight = w[self.pos_image[rows]] / self.pos_region_size[rows, None]  # (R, B)
            index = np.arange(rows.start, rows.stop)[:, None]
            above, at_or_above = index >= k_gt[None, :], index >= k_ge[None, :]
            between = self._times_w(rows, w, w32) + 0.5 * np.asarray(self.tied[rows] @ w) - n_le
            area += (weight * above * between).sum(0)
            y0 += (weight * above).sum(0)
            y1 += (weight * at_or_above).sum(0)
        area, y0, y1 = area / (n_regions * n_neg), y0 / n_regions, y1 / n_regions
        fpr_before, fpr_after = n_gt / n_neg, n_ge / n_neg
        x_end = np.minimum(fpr_limit, fpr_after)
        y_end = y0 + (y1 - y0) * (x_end - fpr_before) / (fpr_after - fpr_before)
        area += (x_end - fpr_before) * (y0 + y_end) / 2.0
        return area / fpr_limit


def pixel_resampled_metrics(
    maps: np.ndarray, masks: np.ndarray, categories: list[str], counts: np.ndarray
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """Per category and mean over categories, each pixel metric as a (B,) array."""
    import warnings

    cats = np.asarray(categories)
    per_category = {}
    for category in dict.fromkeys(categories):
        idx = np.flatnonzero(cats == category)
        per_category[category] = PixelResampler(maps[idx], masks[idx]).metrics(counts[:, idx])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = {m: np.nanmean(np.stack([row[m] for row in per_category.values()]), axis=0) for m in PIXEL_METRICS}
    return per_category, mean


def add_pixel_intervals(
    intervals: dict,
    maps: np.ndarray,
    masks: np.ndarray,
    labels: np.ndarray,
    categories: list[str],
    n_resamples: int,
    seed: int = 0,
    flip_auroc: bool = False,
    pro: bool = True,
) -> dict:
    """`intervals` (from `bootstrap.image_intervals`) with the pixel metrics' intervals added, from their own
    resamples (stratified the same way). `flip_auroc`: an official protocol's flip per resample; `pro=False` leaves
    PRO out (DIVAD's binned PRO has no resampled form here)."""
    from anomaly_zoo.metrics.bootstrap import _interval, stratified_resamples

    counts = stratified_resamples(labels, categories, n_resamples, seed)
    per_category, mean = pixel_resampled_metrics(maps, masks, categories, counts)
    if flip_auroc:
        for row in [*per_category.values(), mean]:
            row["P-AUROC"] = np.where(row["P-AUROC"] < 0.5, 1.0 - row["P-AUROC"], row["P-AUROC"])
    metrics = [m for m in PIXEL_METRICS if pro or m != "PRO"]
    level = float(intervals.get("level", 0.95))
    for category, row in per_category.items():
        intervals["categories"].setdefault(category, {}).update({m: _interval(row[m], level) for m in metrics})
    intervals["mean"].update({m: _interval(mean[m], level) for m in metrics})
    intervals["metrics"] = [*intervals.get("metrics", []), *metrics]
    intervals["pixel_resamples"] = int(n_resamples)
    return intervals
