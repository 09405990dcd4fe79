"""Evaluation protocols: the exact suite (the default) and what each official evaluation computes instead.

The published OneNIP/UniAD and DIVAD tables were computed by their own evaluation code, which differs from the exact
definitions in ways that move numbers by points:

- both replace an AUROC below 0.5 by 1 − AUROC, per class, image and pixel level (OneNIP `utils/eval_helper.py`
  @ e93dec5, `EvalImage.eval_auc` / `EvalPerPixelAUC.eval_auc`; DIVAD `eval_helper.py` @ 9acef11, the same
  methods). That reads the test labels to decide the sign of a score, so it is never the default;
- both take an image's label from its mask (`encode_mask`: any defect pixel), not from the dataset's label;
- DIVAD's PRO (`compute_pro`) is binned: 200 thresholds evenly spaced over [min, max) of the class's maps, FPR over
  all normal pixels, only the points with FPR < 0.3, FPR divided by the largest kept FPR (not by 0.3), then the
  trapezoidal area (`sklearn.metrics.auc`). On long-tailed maps this is points below the exact PRO.

Everything else the official codes compute (AP, F1-max) is what the exact suite computes, so those metrics come from
it. OneNIP's evaluation computes no F1-max and no PRO: in `onenip_official` those are the exact ones, and the
protocol lists them (`Protocol.exact_only`) so results.json and the leaderboard can say so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from anomaly_zoo.metrics.curves import PRO_FPR_LIMIT, RankedScores

#: How many thresholds DIVAD's `compute_pro` evaluates (its `num_th` default).
OFFICIAL_PRO_THRESHOLDS = 200


@dataclass(frozen=True)
class Protocol:
    """How one evaluation turns maps and scores into the seven numbers."""

    name: str
    flip_auroc: bool  # AUROC < 0.5 → 1 − AUROC (image and pixel), per class
    labels_from_masks: bool  # image label = the mask has a defect pixel
    binned_pro: bool  # DIVAD's 200-threshold PRO instead of the exact one
    exact_only: tuple[str, ...]  # metrics the official code does not compute: reported by their exact definition
    source: str  # the official code it reproduces

    @property
    def official(self) -> bool:
        return self.name != "exact"

    def record(self) -> dict[str, object]:
        """What results.json keeps about the protocol (`evaluation` block)."""
        return {
            "protocol": self.name,
            "source": self.source,
            "auroc_flipped_below_half": self.flip_auroc,
            "labels_from_masks": self.labels_from_masks,
            "pro": f"binned ({OFFICIAL_PRO_THRESHOLDS} thresholds)" if self.binned_pro else "exact",
            "exact_only": list(self.exact_only),
        }


PROTOCOLS: dict[str, Protocol] = {
    "exact": Protocol("exact", False, False, False, (), "anomaly_zoo.metrics (exact definitions)"),
    "onenip_official": Protocol(
        "onenip_official", True, True, False, ("I-F1max", "P-F1max", "PRO"),
        "github.com/gaobb/OneNIP @ e93dec5, utils/eval_helper.py",
    ),
    "divad_official": Protocol(
        "divad_official", True, True, True, (),
        "github.com/giddyyupp/DIVAD @ 9acef11, eval_helper.py",
    ),
}  # fmt: skip


def get_protocol(name: str) -> Protocol:
    """The protocol called `name`; an unknown name is an error listing the valid ones."""
    try:
        return PROTOCOLS[str(name)]
    except KeyError:
        raise ValueError(f"evaluation.protocol={name!r}: unknown protocol; valid: {', '.join(PROTOCOLS)}") from None


def flipped(auroc: float) -> float:
    """The official codes' `if auc < 0.5: auc = 1 - auc`."""
    return 1.0 - auroc if auroc < 0.5 else auroc


def _float32_floor(th: np.ndarray) -> np.ndarray:
    """Per float64 threshold, the largest float32 not above it: for float32 x, x > th ⟺ x > floor32(th), so the
    float32 maps can be searched without a float64 copy of them."""
    down = th.astype(np.float32)
    above = down.astype(np.float64) > th
    down[above] = np.nextafter(down[above], np.float32(-np.inf))
    return down


def binned_pro(
    pixel: RankedScores,
    pos_weights: np.ndarray,
    num_th: int = OFFICIAL_PRO_THRESHOLDS,
    fpr_limit: float = PRO_FPR_LIMIT,
) -> float:
    """DIVAD's `compute_pro`, from the suite's sorted pixels instead of `num_th` passes over the maps.

    Its grid is `np.arange(min, max, (max - min) / num_th)` in float64 (test.py's maps are float64; float32 maps
    convert exactly); at each threshold a pixel counts when its value is strictly above it. PRO at a threshold is
    the mean over all regions of the share of the region above it, which is the summed `pos_weights` (1 / (region
    size · number of regions)) of the defect pixels above it; FPR the share of normal pixels above it.
    """
    if not pixel.defined or pos_weights.size == 0:
        return math.nan
    from sklearn.metrics import auc

    pos, neg = pixel.pos, pixel.neg
    lo = float(min(pos[0], neg.min()))
    hi = float(max(pos[-1], neg.max()))
    thresholds = np.arange(np.float64(lo), np.float64(hi), (np.float64(hi) - np.float64(lo)) / num_th)
    if thresholds.size == 0:  # constant maps: the official loop never runs and its area is undefined
        return math.nan
    keys = _float32_floor(thresholds) if pos.dtype == np.float32 else thresholds
    fpr = (neg.size - neg.count(keys, "right")) / neg.size
    # summed weight of the positives from index i on, for every i (plus 0 after the last)
    suffix = np.concatenate([np.cumsum(pos_weights[::-1].astype(np.float64))[::-1], [0.0]])
    pro = suffix[np.searchsorted(pos, keys, side="right")]
    kept = fpr < fpr_limit
    if kept.sum() < 2 or fpr[kept].max() == 0:  # the official code divides by zero or sklearn refuses: undefined
        return math.nan
    return float(auc(fpr[kept] / fpr[kept].max(), pro[kept]))
