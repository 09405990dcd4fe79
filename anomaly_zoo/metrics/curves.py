"""Exact (unbinned) ROC / precision-recall / PRO statistics from two sorted score arrays.

Every metric here is computed from the *sorted positive* and *sorted negative* scores alone, which
gives the same numbers as scikit-learn's threshold sweep (ties included) without ever building the
full per-threshold curve. Sorting two value arrays in place is the only O(n log n) step; it needs no
argsort index (8 bytes per pixel), so peak memory stays near one copy of the maps.
"""

from __future__ import annotations

import math

import numpy as np

PRO_FPR_LIMIT = 0.3


def _distinct_descending(sorted_asc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values of an ascending array, largest first, with how many elements are >= each."""
    desc = sorted_asc[::-1]
    if desc.size == 0:
        return desc, np.zeros(0, dtype=np.int64)
    last_of_group = np.flatnonzero(desc[1:] != desc[:-1])
    ends = np.append(last_of_group, desc.size - 1)
    return desc[ends], ends.astype(np.int64) + 1


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score_pos > score_neg) + 0.5 P(equal): the trapezoidal ROC area scikit-learn reports.

    `pos` and `neg` must be sorted ascending.
    """
    if pos.size == 0 or neg.size == 0:
        return math.nan
    below = np.searchsorted(neg, pos, side="left").astype(np.float64)
    equal = np.searchsorted(neg, pos, side="right") - below
    return float((below.sum() + 0.5 * equal.sum()) / (pos.size * neg.size))


def ap_and_f1max(pos: np.ndarray, neg: np.ndarray) -> tuple[float, float]:
    """Average precision (scikit-learn's step-wise definition) and the best F1 over all thresholds.

    Recall only changes at thresholds equal to a positive score, and among thresholds with the same
    recall the highest one has the fewest false positives, so both statistics only need the distinct
    positive scores. `pos` and `neg` must be sorted ascending.
    """
    n_pos = pos.size
    if n_pos == 0 or neg.size == 0:
        return math.nan, math.nan
    thresholds, tp = _distinct_descending(pos)
    fp = neg.size - np.searchsorted(neg, thresholds, side="left")
    tp = tp.astype(np.float64)
    precision = tp / (tp + fp)
    recall_step = np.diff(tp, prepend=0.0) / n_pos
    ap = float(np.sum(recall_step * precision))
    f1max = float(np.max(2.0 * tp / (tp + fp + n_pos)))
    return ap, f1max


def pro_auc(pos: np.ndarray, pos_weights: np.ndarray, neg: np.ndarray, fpr_limit: float = PRO_FPR_LIMIT) -> float:
    """Normalised area under the per-region-overlap curve for FPR in [0, fpr_limit].

    `pos` (ascending) are the scores of defect pixels and `pos_weights` their weights
    1 / (region size * number of regions), so the summed weight of defect pixels at or above a threshold is
    the mean per-region overlap. `neg` (ascending) are all normal pixels. The curve is evaluated at every
    distinct score (exact, no fixed threshold grid) and integrated with the trapezoidal rule. The last
    segment, which crosses FPR = fpr_limit, is linearly interpolated at fpr_limit (as the MVTec AD
    reference code does), and the area is divided by fpr_limit so a perfect map scores 1.
    """
    if pos.size == 0 or neg.size == 0:
        return math.nan
    n_neg = neg.size
    # Only the top `fpr_limit` share of negatives can lie on the integrated part of the curve.
    # Start at a whole group of equal scores so the crossing segment's FPR is exact.
    needed = min(n_neg, math.ceil(fpr_limit * n_neg) + 1)
    top = neg[np.searchsorted(neg, neg[n_neg - needed], side="left") :]
    thresholds, n_at_or_above = _distinct_descending(top)
    fpr = n_at_or_above / n_neg
    # Weight of defect pixels above a threshold: suffix sums over the ascending positive scores.
    suffix = np.zeros(pos.size + 1, dtype=np.float64)
    suffix[:-1] = np.cumsum(pos_weights[::-1], dtype=np.float64)[::-1]
    pro_ge = suffix[np.searchsorted(pos, thresholds, side="left")]
    pro_gt = suffix[np.searchsorted(pos, thresholds, side="right")]
    fpr_prev = np.concatenate(([0.0], fpr[:-1]))
    # Segment g runs from (fpr_prev, pro_gt) to (fpr, pro_ge).
    crossing = int(np.searchsorted(fpr, fpr_limit, side="left"))
    crossing = min(crossing, fpr.size - 1)
    full = slice(0, crossing)
    area = float(np.sum((fpr[full] - fpr_prev[full]) * (pro_gt[full] + pro_ge[full]) / 2.0))
    x0, x1 = fpr_prev[crossing], fpr[crossing]
    y0, y1 = pro_gt[crossing], pro_ge[crossing]
    x_end = min(fpr_limit, x1)
    y_end = y0 + (y1 - y0) * (x_end - x0) / (x1 - x0)
    area += (x_end - x0) * (y0 + y_end) / 2.0
    return float(area / fpr_limit)
