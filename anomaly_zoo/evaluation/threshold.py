"""Decision thresholds chosen at training time on the validation split (never on the test split).

`DecisionThreshold` is a callback whose state Lightning writes into every checkpoint itself: the threshold is
computed from the weights being saved, at the moment they are saved, so `last.ckpt` and `best.ckpt` each carry the
threshold of their own model. `recorded_threshold` reads it back (predict).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from anomaly_zoo.checkpointing import global_rng_state, set_global_rng_state
from anomaly_zoo.data.context import Batch
from anomaly_zoo.methods.base import AnomalyMethod

log = logging.getLogger(__name__)

#: The callback's key under checkpoint["callbacks"] (fixed, so that readers need not know its arguments).
STATE_KEY = "DecisionThreshold"


@torch.no_grad()
def validation_scores(method: AnomalyMethod, loader: Iterable[Batch]) -> np.ndarray:
    was_training = method.training
    method.eval()
    scores = []
    for batch in loader:
        out = method.score_batch(batch["image"].to(method.device), list(batch["category"]), batch.get("path"),
                                 batch.get("views"))  # fmt: skip
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


class DecisionThreshold(Callback):
    """The score threshold at `false_alarm_rate` on the normal validation images, saved with each checkpoint.

    `validation_batches` gives the validation split (None or empty: no threshold is recorded and predict needs
    threshold=...). Scoring happens when Lightning asks for the callback's state, i.e. once per checkpoint save (the
    same model state is scored once), under the global random-number state of the moment, which is restored after
    it, so that recording a threshold never changes how training continues.
    """

    def __init__(self, validation_batches: Callable[[], Iterable[Batch]] | None, false_alarm_rate: float) -> None:
        if not 0.0 <= false_alarm_rate < 1.0:
            raise ValueError(f"eval.threshold_false_alarm_rate={false_alarm_rate} must be in [0, 1)")
        self.validation_batches = validation_batches
        self.false_alarm_rate = float(false_alarm_rate)
        self.record: dict[str, Any] | None = None
        self._trainer: Trainer | None = None
        self._method: AnomalyMethod | None = None
        self._scored_at: tuple[int, int] | None = None

    @property
    def state_key(self) -> str:
        return STATE_KEY

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if isinstance(pl_module, AnomalyMethod):
            self._trainer, self._method = trainer, pl_module

    def _update(self) -> None:
        if self._trainer is None or self._method is None or self.validation_batches is None:
            return
        at = (self._trainer.current_epoch, self._trainer.global_step)
        if at == self._scored_at:
            return
        rng = global_rng_state()
        try:
            scores = validation_scores(self._method, self.validation_batches())
        finally:
            set_global_rng_state(rng)
        self._scored_at = at
        if len(scores) == 0:
            return
        self.record = {
            "value": false_alarm_threshold(scores, self.false_alarm_rate),
            "rule": "false_alarm_rate",
            "false_alarm_rate": self.false_alarm_rate,
            "validation_images": len(scores),
        }

    def state_dict(self) -> dict[str, Any]:
        self._update()
        return {"record": self.record}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.record = state_dict.get("record")

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.record is not None:
            log.info("decision threshold %.6g (false-alarm rate %.3g on %d validation images)", self.record["value"],
                     self.false_alarm_rate, self.record["validation_images"])  # fmt: skip
        elif self.validation_batches is None:
            log.info("no validation split (dataset.val_ratio=0): no decision threshold recorded in the checkpoints")


def recorded_threshold(checkpoint: dict[str, Any]) -> dict[str, Any] | None:
    """The threshold record a checkpoint carries (`DecisionThreshold`'s state; older checkpoints: a top-level
    `threshold` entry), or None."""
    state = (checkpoint.get("callbacks") or {}).get(STATE_KEY) or {}
    return state.get("record") or checkpoint.get("threshold")
