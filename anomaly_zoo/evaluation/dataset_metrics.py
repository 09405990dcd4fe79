"""A run's dataset-specific metrics (`anomaly_zoo.metrics.dataset_specific`): what the data must provide, read from
the datamodule, and the results.json block `dataset_metrics`.

What the datasets side provides (read here, nothing else):
- `Sample.sample_id` (Real-IAD): the physical object an image shows (its views share it); ids may repeat across
  categories.
- `Sample.anomaly_kind` (MVTec LOCO): `logical_anomalies` or `structural_anomalies` (reported as "logical" and
  "structural") for defective images (anything for good ones).
- MVTec LOCO: `Sample.masks`, a defective image's ground-truth PNGs (one per defect; a folder as `mask_path` is
  read too), and `datamodule.defects_configs`, each category's `defects_config.json` found in `setup`.
- MVTec AD 2: `datamodule.val_dataset`, normal validation images of every category (its `validation` split; elsewhere
  dataset.val_ratio>0 where the train split is indexed).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anomaly_zoo.metrics.dataset_specific import DatasetMetricsRequest, dataset_specific_metrics, request_for
from anomaly_zoo.metrics.segf1 import NO_VALIDATION_FIX
from anomaly_zoo.metrics.spro import DefectType, GroundTruthChannel, read_defects_config, read_gt_channels

__all__ = ["check_dataset_inputs", "dataset_metrics_block", "request_for"]


def defects_config_path(datamodule: Any, category: str) -> Path:
    """MVTec LOCO's per-category defects configuration (the path the datamodule found in `setup`)."""
    found = getattr(datamodule, "defects_configs", {}).get(category)
    return Path(found) if found else Path(datamodule.root) / datamodule.info.subdir / category / "defects_config.json"


def check_dataset_inputs(request: DatasetMetricsRequest, datamodule: Any) -> None:
    """Before any training: inputs the dataset's metrics will need and that are missing are one-line errors."""
    if request.segf1:
        samples = datamodule.val_dataset.samples if datamodule.val_dataset else []
        found = {s.category for s in samples if s.label == 0}
        missing = [c for c in datamodule.categories if c not in found]
        if missing:
            raise ValueError(f"SegF1 (dataset={datamodule.name}) chooses its threshold on normal validation images "
                             f"per category, and this run has none for {', '.join(missing)}: "
                             f"{no_validation_fix(datamodule)}")  # fmt: skip
    if request.spro:
        for category in datamodule.categories:
            read_defects_config(defects_config_path(datamodule, category))  # names a missing file


def no_validation_fix(datamodule: Any) -> str:
    """What gives this run validation images: `dataset.val_ratio` only holds out images of an indexed train split."""
    if datamodule.info.own_val_split:
        return (f"dataset={datamodule.name} takes them from its own validation split ({datamodule.root}/<category>/"
                "validation/good), which is empty or missing there")  # fmt: skip
    if not datamodule.use_train_split:
        # training-free methods, and the test side of a cross-dataset run, never index the train split
        return ("the train split is not indexed here (a training-free method, or the test set of a cross-dataset "
                "run), so dataset.val_ratio holds no image out; SegF1 needs a dataset with its own validation split "
                "(validation/good, as mvtec_ad2 ships)")  # fmt: skip
    return NO_VALIDATION_FIX


@torch.no_grad()
def validation_maps(method: Any, loader: Any, size: tuple[int, int]) -> dict[str, np.ndarray]:
    """Per category: the anomaly maps of the normal validation images at `size` (the masks' resolution)."""
    from anomaly_zoo.methods.components import upsample_maps

    was_training = method.training
    method.eval()
    by_category: dict[str, list[np.ndarray]] = {}
    try:
        for batch in loader:
            out = method.score_batch(batch["image"].to(method.device), list(batch["category"]), batch.get("path"),
                                     batch.get("views"))  # fmt: skip
            maps = upsample_maps(out["anomaly_maps"].float(), size).cpu().numpy()
            for m, label, category in zip(maps, batch["label"].tolist(), batch["category"], strict=True):
                if int(label) == 0:  # a validation split with defects never feeds the threshold
                    by_category.setdefault(str(category), []).append(m)
    finally:
        method.train(was_training)
    return {c: np.stack(v) for c, v in by_category.items()}


def gt_channels(samples: Sequence[Any], size: tuple[int, int], datamodule: Any) -> list[list[GroundTruthChannel]]:
    """Each test image's ground-truth channels at `size`, resized as the suite's masks are."""
    from anomaly_zoo.data.image_dataset import resize_mask

    configs: dict[str, dict[int, DefectType]] = {}
    mode = getattr(datamodule, "mask_resize", "nearest")

    def resize(mask: np.ndarray, to: tuple[int, int]) -> np.ndarray:
        return resize_mask(mask, to, mode).numpy() > 0

    channels: list[list[GroundTruthChannel]] = []
    for sample in samples:
        if sample.label == 0:
            channels.append([])
            continue
        if sample.category not in configs:
            configs[sample.category] = read_defects_config(defects_config_path(datamodule, sample.category))
        files: list[str] = list(getattr(sample, "masks", ()) or ([sample.mask_path] if sample.mask_path else []))
        if not files:
            raise ValueError(f"{sample.image_path}: sPRO needs its ground-truth PNGs (one per defect); it has none")
        # a ground-truth folder given as the mask path is read as its PNGs
        source: str | list[str] = files[0] if len(files) == 1 and Path(files[0]).is_dir() else files
        channels.append(read_gt_channels(source, configs[sample.category], size, resize))
    return channels


def dataset_metrics_block(
    request: DatasetMetricsRequest,
    samples: Sequence[Any],
    scores: np.ndarray,
    labels: np.ndarray,
    maps: np.ndarray,
    masks: np.ndarray,
    suite_rows: dict[str, dict[str, float]],
    datamodule: Any = None,
    val_maps: dict[str, np.ndarray] | None = None,
) -> dict[str, Any] | None:
    """results.json's `dataset_metrics` for the scored test images `samples` (None: the dataset adds none)."""
    if not request.any:
        return None
    size = (int(maps.shape[1]), int(maps.shape[2]))
    block = dataset_specific_metrics(
        request, scores, labels, maps, masks, [s.category for s in samples],
        suite_rows=suite_rows,
        sample_ids=[getattr(s, "sample_id", None) for s in samples] if request.sample_level else None,
        anomaly_kinds=[_kind(s) for s in samples] if request.by_anomaly_kind else None,
        val_maps=val_maps,
        gt_channels=gt_channels(samples, size, datamodule) if request.spro else None,
    )  # fmt: skip
    return _json_safe(block)


def _kind(sample: Any) -> str | None:
    """ "logical" / "structural" from MVTec LOCO's folder names (`logical_anomalies`, `structural_anomalies`)."""
    kind = getattr(sample, "anomaly_kind", None)
    return kind.removesuffix("_anomalies") if isinstance(kind, str) else kind


def _json_safe(value: Any) -> Any:
    """JSON has no NaN: an undefined metric is written as null, as in the suite's rows."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
