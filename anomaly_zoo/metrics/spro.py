"""sPRO and AU-sPRO (MVTec LOCO AD): the saturated per-region overlap, from the dataset's `defects_config.json`.

Definitions, as MVTec's LOCO evaluation code computes them (`src/image.py`, `src/metrics.py`, `src/util.py` of
its `mvtec_loco_ad_evaluation`; Bergmann et al., IJCV 2022):

- The ground truth of a defective image is a folder of PNGs, one per defect ("channel"); a channel's pixels carry
  one positive value, which `defects_config.json` maps to a defect type with a `saturation_threshold` and a
  `relative_saturation` flag. Channels are not split into connected components, and may overlap.
- Saturation area of a channel of area A: relative → int(saturation_threshold · A); absolute →
  min(saturation_threshold, A).
- At threshold t (a pixel is predicted anomalous when its score > t): sPRO of a channel = min(TP / saturation
  area, 1), TP its pixels predicted anomalous; the curve's y is the mean over all channels of all images, its x the
  FPR over the pixels outside every channel (all pixels of good images included).
- AU-sPRO: the trapezoidal area under that curve up to FPR `fpr_limit` (0.05 in the LOCO paper), the segment
  crossing the limit interpolated linearly, divided by the limit.

Exactness: MVTec's script samples thresholds and refines them until adjacent curve points are close; here the curve
runs through every distinct score, as the suite's PRO. Because only a channel's top `saturation area` pixels can
count (a pixel beyond them finds the channel saturated), the mean sPRO at or above a score is a weighted count of
defect pixels: the k-th highest pixel of a channel with saturation area S weighs (min(k, S) − min(k−1, S)) / S
divided by the number of channels. So the AU-sPRO is `curves.pro_auc` with those weights: one sort of the normal
pixels. Two cases the official code leaves undefined are defined here: a saturation area of 0 (relative
saturation of a tiny channel) counts as 1 (any overlap saturates; the official gives NaN without overlap), and
absolute thresholds at a reduced resolution are scaled by the pixel-area ratio (`GroundTruthChannel.area_scale`).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from anomaly_zoo.metrics.curves import RankedScores, pro_auc

#: MVTec LOCO's integration limit (the paper's AU-sPRO; its script also reports 0.01, 0.1, 0.3 and 1.0).
SPRO_FPR_LIMIT = 0.05


@dataclass(frozen=True)
class DefectType:
    """One entry of `defects_config.json`."""

    name: str
    pixel_value: int
    saturation_threshold: float
    relative_saturation: bool

    def __post_init__(self) -> None:
        if not 1 <= self.pixel_value <= 255:
            raise ValueError(f"defect {self.name!r}: pixel_value {self.pixel_value} must be in 1..255")
        if self.relative_saturation and not 0.0 < self.saturation_threshold <= 1.0:
            raise ValueError(
                f"defect {self.name!r}: a relative saturation_threshold must be in (0, 1], got "
                f"{self.saturation_threshold}"
            )
        if not self.relative_saturation and not self.saturation_threshold > 0:
            raise ValueError(f"defect {self.name!r}: saturation_threshold {self.saturation_threshold} must be > 0")


def read_defects_config(path: str | Path) -> dict[int, DefectType]:
    """pixel value → DefectType from a LOCO category's `defects_config.json` (a list of entries)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sPRO needs {path} (MVTec LOCO's per-category defects_config.json); it is missing")
    try:
        entries = json.loads(path.read_text())
        defects = [
            DefectType(str(e["defect_name"]), int(e["pixel_value"]), float(e["saturation_threshold"]),
                       bool(e["relative_saturation"]))
            for e in entries
        ]  # fmt: skip
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a defects config (a list of defect_name, pixel_value, saturation_threshold, "
                         f"relative_saturation entries): {err}") from err  # fmt: skip
    by_value = {d.pixel_value: d for d in defects}
    if len(by_value) != len(defects):
        raise ValueError(f"{path}: two defect types share a pixel_value")
    return by_value


@dataclass(frozen=True)
class GroundTruthChannel:
    """One defect of one image: its pixels (bool, H×W at the maps' resolution) and its defect type."""

    mask: np.ndarray
    defect: DefectType
    #: pixel-area ratio of the mask's resolution to the annotation's (1 at full resolution): absolute saturation
    #: thresholds are pixel counts of the original image
    area_scale: float = 1.0

    def saturation_area(self) -> float:
        """The overlap (pixels) at which the channel counts as found."""
        area = int(np.count_nonzero(self.mask))
        if self.defect.relative_saturation:
            saturation = float(int(self.defect.saturation_threshold * area))
        else:
            saturation = min(self.defect.saturation_threshold * self.area_scale, float(area))
        return max(saturation, 1.0)  # 0 (official: NaN without overlap): any overlap saturates


def channel_from_array(array: np.ndarray, defects: Mapping[int, DefectType], where: str = "mask") -> GroundTruthChannel:
    """A channel from one ground-truth PNG's integer array: zeros and exactly one positive value."""
    values = np.unique(array)
    positive = values[values != 0]
    if positive.size != 1 or values.min() < 0:
        raise ValueError(
            f"{where}: a LOCO ground-truth PNG holds 0 and one positive value; found {values[:10].tolist()}"
        )
    value = int(positive[0])
    if value not in defects:
        raise ValueError(f"{where}: pixel value {value} is not in defects_config.json (known: {sorted(defects)})")
    return GroundTruthChannel(array != 0, defects[value])


def read_gt_channels(
    png_dir: str | Path | Sequence[str | Path],
    defects: Mapping[int, DefectType],
    size: tuple[int, int] | None = None,
    resize: Callable[[np.ndarray, tuple[int, int]], np.ndarray] | None = None,
) -> list[GroundTruthChannel]:
    """The channels of one defective image: its folder of PNGs (sorted by name), or the PNG files themselves.

    `size` (H, W): the maps' resolution; each channel's mask is resized with `resize(bool mask, size) -> bool mask`
    (default: nearest neighbour; pass the datamodule's mask resize so channels match the suite's masks) and
    carries the area scale H·W / original H·W. A defect that vanishes at `size` is left out with a warning.
    """
    from PIL import Image

    if isinstance(png_dir, (str, Path)):
        folder = Path(png_dir)
        files = sorted(folder.glob("*.png")) if folder.is_dir() else []
    else:
        folder, files = Path(png_dir[0]).parent if png_dir else Path("."), sorted(Path(f) for f in png_dir)
    if not files:
        raise FileNotFoundError(f"{folder}: no ground-truth PNGs (MVTec LOCO keeps one folder of PNGs per image)")
    channels = []
    for file in files:
        channel = channel_from_array(np.asarray(Image.open(file)), defects, str(file))
        full = channel.mask.shape
        if size is None or full == tuple(size):
            channels.append(channel)
            continue
        mask = (resize or _nearest)(channel.mask, size)
        if not mask.any():  # a defect smaller than the sampling grid
            warnings.warn(f"{file}: the defect vanishes at {size[0]}x{size[1]} and is left out of sPRO "
                          "(a larger dataset.image_size keeps it)", stacklevel=2)  # fmt: skip
            continue
        channels.append(GroundTruthChannel(mask, channel.defect, (size[0] * size[1]) / (full[0] * full[1])))
    return channels


def _nearest(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(mask).resize((size[1], size[0]), Image.Resampling.NEAREST)).astype(bool)


def mean_spro_at(maps: Any, channels: Sequence[Sequence[GroundTruthChannel]], threshold: float) -> float:
    """Mean sPRO over all channels at one threshold (a pixel anomalous when its score > threshold)."""
    values = [
        min(np.count_nonzero((np.asarray(m) > threshold) & ch.mask) / ch.saturation_area(), 1.0)
        for m, image_channels in zip(maps, channels, strict=True)
        for ch in image_channels
    ]
    return float(np.mean(values)) if values else math.nan


def _channel_weights(scores: np.ndarray, saturation: float) -> tuple[np.ndarray, np.ndarray]:
    """A channel's pixel scores in descending order and the sPRO each adds: (min(k,S) − min(k−1,S)) / S."""
    ordered = np.sort(scores)[::-1]
    k = np.arange(1, ordered.size + 1, dtype=np.float64)
    return ordered, (np.minimum(k, saturation) - np.minimum(k - 1, saturation)) / saturation


def au_spro(
    maps: Any,
    channels: Sequence[Sequence[GroundTruthChannel]],
    fpr_limit: float = SPRO_FPR_LIMIT,
) -> float:
    """Exact AU-sPRO up to `fpr_limit` (normalised to [0, 1]) of maps (N, H, W) with each image's channels.

    `channels[i]`: image i's defects (empty for a good image). NaN (with a warning) without any channel or
    without any defect-free pixel.
    """
    maps_np = np.asarray(maps)
    if maps_np.ndim != 3 or len(channels) != maps_np.shape[0]:
        raise ValueError(f"maps must be (N, H, W) with one channel list per map; got maps {maps_np.shape} and "
                         f"{len(channels)} channel lists")  # fmt: skip
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"AU-sPRO integration limit {fpr_limit} must be in (0, 1]")
    if not np.isfinite(maps_np).all():
        raise ValueError("maps contain NaN/inf values; the method produced invalid output")
    pos, weights, neg = [], [], []
    for i, image_channels in enumerate(channels):
        anomalous = np.zeros(maps_np.shape[1:], dtype=bool)
        for ch in image_channels:
            if ch.mask.shape != maps_np.shape[1:]:
                raise ValueError(f"image {i}: a ground-truth channel of shape {ch.mask.shape} for a map of shape "
                                 f"{maps_np.shape[1:]}")  # fmt: skip
            scores, w = _channel_weights(maps_np[i][ch.mask], ch.saturation_area())
            pos.append(scores)
            weights.append(w)
            anomalous |= ch.mask
        neg.append(maps_np[i][~anomalous])
    n_channels = sum(len(c) for c in channels)
    neg_all = np.sort(np.concatenate(neg).astype(np.float32, copy=False)) if neg else np.zeros(0, np.float32)
    if n_channels == 0 or neg_all.size == 0:
        warnings.warn("AU-sPRO is undefined without defects or without defect-free pixels; reported as NaN",
                      stacklevel=2)  # fmt: skip
        return math.nan
    pos_all = np.concatenate(pos).astype(np.float32, copy=False)
    order = np.argsort(pos_all, kind="stable")
    w_all = np.concatenate(weights)[order] / n_channels
    return pro_auc(RankedScores.from_sorted(pos_all[order], neg_all), w_all, fpr_limit)
