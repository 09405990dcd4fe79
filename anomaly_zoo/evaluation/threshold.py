"""Decision thresholds chosen at training time on the validation split (never on the test split)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anomaly_zoo.methods.base import AnomalyMethod

log = logging.getLogger(__name__)


@torch.no_grad()
def validation_scores(method: AnomalyMethod, loader) -> np.ndarray:
    was_training = method.training
    method.eval()
    scores = []
    for batch in loader:
        out = method.score_batch(batch["image"].to(method.device), list(batch["category"]), batch.get("path"))
        scores.append(out["pred_scores"].float().cpu())
    method.train(was_training)
    return torch.cat(scores).numpy()


def false_alarm_threshold(normal_scores: np.ndarray, false_alarm_rate: float) -> float:
    """The smallest threshold t with mean(normal_scores > t) <= false_alarm_rate ("anomalous" means score > t)."""
    if not 0.0 <= false_alarm_rate < 1.0:
        raise ValueError(f"false_alarm_rate={false_alarm_rate} must be in [0, 1)")
    ordered = np.sort(normal_scores)[::-1]
    allowed = int(np.floor(false_alarm_rate * len(ordered)))  # normal images that may score above t
    return float(ordered[allowed]) if allowed < len(ordered) else float(ordered[-1])


def calibrate_and_record(
    method: AnomalyMethod, datamodule, checkpoint_dir: Path, false_alarm_rate: float
) -> dict[str, Any] | None:
    """Threshold at `false_alarm_rate` on the validation split's normal images, written into the checkpoints.

    Without a validation split (dataset.val_ratio=0) no threshold is recorded: predict then needs threshold=...
    """
    if not datamodule.val_dataset:
        log.info("no validation split (dataset.val_ratio=0): no decision threshold recorded in the checkpoint")
        return None
    scores = validation_scores(method, datamodule.val_dataloader())
    record = {
        "value": false_alarm_threshold(scores, false_alarm_rate),
        "rule": "false_alarm_rate",
        "false_alarm_rate": float(false_alarm_rate),
        "validation_images": len(scores),
    }
    for path in sorted(checkpoint_dir.glob("*.ckpt")):
        state = torch.load(path, map_location="cpu", weights_only=True)
        state["threshold"] = record
        tmp = path.with_suffix(".ckpt.tmp")
        torch.save(state, tmp)
        tmp.replace(path)
    log.info("decision threshold %.6g (false-alarm rate %.3g on %d validation images)", record["value"],
             false_alarm_rate, len(scores))  # fmt: skip
    return record
