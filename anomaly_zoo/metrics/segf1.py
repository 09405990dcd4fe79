"""SegF1 (MVTec AD 2): pixel F1 of anomaly maps binarised at one threshold chosen on validation images.

Two functions, kept apart so that the test set can never choose its own threshold:

- `validation_threshold(val_maps, ...)` derives the threshold from the anomaly maps of *normal validation images*
  only (the rule is named and recorded: mean + k·std of their pixel scores by default, or a quantile);
- `segf1(maps, masks, threshold)` scores the test maps at that given threshold.

MVTec AD 2's evaluation server reads binary maps the submitter thresholded (`anomaly_images_thresholded/`, per
MVTec's `mvtec_ad_2_public_offline.py`), so the threshold is the method's choice made without test data; the rule
here is the statistical one commonly used on MVTec AD 2 (see the metrics README for what could be verified).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

#: The fix a run without validation images needs, named in the error.
NO_VALIDATION_FIX = "set dataset.val_ratio>0 (normal training images held out) or use the dataset's validation split"


@dataclass(frozen=True)
class ThresholdRule:
    """How a pixel threshold is derived from normal validation maps.

    rule "mean_std": mean + k·std of all their pixel scores (population std); "quantile": their q-quantile
    (numpy's linear interpolation).
    """

    rule: str = "mean_std"
    k: float = 3.0
    q: float = 0.99

    def __post_init__(self) -> None:
        if self.rule not in ("mean_std", "quantile"):
            raise ValueError(f"SegF1 threshold rule {self.rule!r} unknown; use 'mean_std' or 'quantile'")
        if self.rule == "quantile" and not 0.0 < self.q <= 1.0:
            raise ValueError(f"SegF1 threshold quantile q={self.q} must be in (0, 1]")
        if self.rule == "mean_std" and not math.isfinite(self.k):
            raise ValueError(f"SegF1 threshold k={self.k} must be finite")

    def record(self) -> dict[str, Any]:
        return {"rule": self.rule, "k": self.k} if self.rule == "mean_std" else {"rule": self.rule, "q": self.q}


def validation_threshold(val_maps: Any, labels: Any = None, rule: ThresholdRule | None = None) -> float:
    """The pixel threshold `rule` derives from the maps of normal validation images (N, H, W).

    `labels` (N,), when given: only images labelled 0 are used (a validation split with defects must not leak
    them into the threshold). No normal validation image is a one-line error naming the fix.
    """
    rule = rule or ThresholdRule()
    maps = np.asarray(val_maps)
    if labels is not None:
        labels_np = np.asarray(labels)
        if labels_np.shape != (len(maps),):
            raise ValueError(f"validation labels: expected shape ({len(maps)},), got {labels_np.shape}")
        maps = maps[labels_np == 0]
    if maps.size == 0:
        raise ValueError(f"SegF1 needs normal validation images to choose its threshold: {NO_VALIDATION_FIX}")
    values = maps.astype(np.float64, copy=False).ravel()
    if not np.isfinite(values).all():
        raise ValueError("validation maps contain NaN/inf values; the method produced invalid output")
    if rule.rule == "quantile":
        return float(np.quantile(values, rule.q))
    return float(values.mean() + rule.k * values.std())


def segf1(maps: Any, masks: Any, threshold: float) -> float:
    """Pixel F1 over all pixels of all given images, a pixel predicted anomalous when its score > `threshold`.

    TP, FP and FN are pooled over the images (normal images contribute false positives only), so
    F1 = 2·TP / (2·TP + FP + FN). NaN when there is neither a defect pixel nor a predicted one (0/0).
    """
    maps_np, masks_np = np.asarray(maps), np.asarray(masks)
    if maps_np.shape != masks_np.shape:
        raise ValueError(f"maps and masks must have one shape; got {maps_np.shape} and {masks_np.shape}")
    if not math.isfinite(threshold):
        raise ValueError(f"SegF1 threshold {threshold} is not finite")
    truth = masks_np.astype(bool)
    pred = maps_np > threshold
    tp = int(np.count_nonzero(pred & truth))
    fp = int(np.count_nonzero(pred)) - tp
    fn = int(np.count_nonzero(truth)) - tp
    denominator = 2 * tp + fp + fn
    return math.nan if denominator == 0 else 2.0 * tp / denominator
