"""The Lightning trainer and callbacks from the config: `trainer` (its `_target_` honoured) and `callbacks`
(conf/callbacks/), with what only a run has (logger, the runner's own callbacks, run folder, plugins) passed in."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import hydra
import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelSummary, ProgressBar

log = logging.getLogger(__name__)

DEFAULT_TRAINER = "lightning.pytorch.Trainer"
#: Trainer arguments that only the run can give; in the config they would be silently replaced.
RUNTIME_ARGUMENTS = {
    "logger": "choose it with the logger group (logger=csv, logger=wandb, ~logger for none)",
    "callbacks": "add callbacks to the callbacks group (conf/callbacks/, +callbacks.<name>._target_=...)",
    "default_root_dir": "the run folder is paths.output_dir (hydra.run.dir=... / hydra.sweep.dir=...)",
}


def apply_method_trainer_arguments(
    trainer_cfg: dict[str, Any], method_arguments: Mapping[str, Any], method: str
) -> None:
    """The method's own trainer settings win over the config's (e.g. OneNIP's method.max_epochs, PatchKNN's single
    pass); each one that changes a value is logged: a warning where the config set another value, else info."""
    for key, value in method_arguments.items():
        configured = trainer_cfg.get(key)
        if (key in trainer_cfg and configured == value) or (key not in trainer_cfg and value is None):
            continue
        shown = configured if key in trainer_cfg else "unset"
        level = logging.INFO if configured is None else logging.WARNING
        log.log(level, "method %s sets trainer.%s=%s (config: %s)", method, key, value, shown)
        trainer_cfg[key] = value


def _left_out_because(callback: Callback, logger: Any, trains: bool, trainer_cfg: Mapping[str, Any]) -> str | None:
    if isinstance(callback, LearningRateMonitor):
        if not logger:
            return "no logger (~logger)"
        if not trains:
            return "the method does not train"
    if isinstance(callback, ProgressBar) and trainer_cfg.get("enable_progress_bar") is False:
        return "trainer.enable_progress_bar=false"
    if isinstance(callback, ModelSummary) and trainer_cfg.get("enable_model_summary") is False:
        return "trainer.enable_model_summary=false"
    return None


def instantiate_callbacks(
    callbacks_cfg: Mapping[str, Any] | None, logger: Any, trains: bool, trainer_cfg: Mapping[str, Any]
) -> list[Callback]:
    """`callbacks.<name>` entries (resolved, each with a `_target_`) → Lightning callbacks; null entries and a null
    group give none. Monitoring callbacks that cannot work in this run are left out (logged)."""
    if not callbacks_cfg:
        return []
    if not isinstance(callbacks_cfg, Mapping):
        raise TypeError(f"callbacks: must map names to {{_target_: ..., ...}}, got {type(callbacks_cfg).__name__}")
    built = []
    for name, entry in callbacks_cfg.items():
        if entry is None:
            continue
        if not isinstance(entry, Mapping) or "_target_" not in entry:
            raise ValueError(f"callbacks.{name}: needs a _target_ (a Lightning Callback class), got {entry!r}")
        callback = hydra.utils.instantiate(entry, _convert_="all")
        if not isinstance(callback, Callback):
            raise TypeError(f"callbacks.{name}._target_={entry['_target_']} is not a Lightning Callback")
        reason = _left_out_because(callback, logger, trains, trainer_cfg)
        if reason is not None:
            log.info("callbacks.%s (%s) left out: %s", name, type(callback).__name__, reason)
            continue
        built.append(callback)
    return built


def instantiate_trainer(trainer_cfg: Mapping[str, Any], *, plugins: list | None = None, **runtime: Any) -> pl.Trainer:
    """`trainer._target_` (default lightning.pytorch.Trainer) with the config's arguments plus the run's own
    (`runtime`: logger, callbacks, default_root_dir); `plugins` are added to the config's `trainer.plugins`."""
    cfg = dict(trainer_cfg)
    for key, hint in RUNTIME_ARGUMENTS.items():
        if key in cfg:
            raise ValueError(f"trainer.{key}: set by the run, not the trainer config: {hint}")
    cfg.setdefault("_target_", DEFAULT_TRAINER)
    configured_plugins = cfg.pop("plugins", None) or []
    if not isinstance(configured_plugins, list):
        configured_plugins = [configured_plugins]
    configured_plugins = [hydra.utils.instantiate(p, _convert_="all") if isinstance(p, Mapping) else p
                          for p in configured_plugins]  # fmt: skip
    make = hydra.utils.instantiate(cfg, _partial_=True, _convert_="all")
    trainer = make(**runtime, plugins=[*configured_plugins, *(plugins or [])])
    if not isinstance(trainer, pl.Trainer):
        raise TypeError(f"trainer._target_={cfg['_target_']} made a {type(trainer).__name__}, not a Lightning Trainer")
    return trainer
