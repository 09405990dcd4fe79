"""The one run path behind `anomaly_zoo.train` and `anomaly_zoo.test`:

config → datamodule, method, logger, trainer → fit (if the method learns) → test → metrics →
results.json, a printed table, heatmap overlays.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import traceback
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf

from anomaly_zoo.evaluation import EvaluationCollector, write_results
from anomaly_zoo.evaluation.threshold import calibrate_and_record
from anomaly_zoo.methods.base import AnomalyMethod
from anomaly_zoo.reporting import metrics_table, save_overlay

log = logging.getLogger(__name__)


def output_dir(cfg: DictConfig) -> Path:
    """`paths.output_dir`: Hydra's run folder unless overridden; the logger, results, checkpoints and heatmaps all
    follow it, so `paths.output_dir=...` on the command line moves everything together."""
    return Path(cfg.paths.output_dir)


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, corrupt, truncated or not a Lightning checkpoint."""


def read_checkpoint(ckpt_path: str | Path) -> dict[str, Any]:
    """Read a checkpoint without unpickling arbitrary objects (weights_only=True)."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise CheckpointError(f"ckpt_path={ckpt_path}: no such checkpoint file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        first_line = str(err).splitlines()[0] if str(err) else ""
        raise CheckpointError(
            f"cannot read checkpoint {path}: {type(err).__name__}: {first_line} "
            "(corrupt or truncated file, or not a checkpoint written by anomaly_zoo/Lightning)"
        ) from err
    if not isinstance(state, dict) or "state_dict" not in state:
        raise CheckpointError(f"checkpoint {path} has no 'state_dict': not a Lightning checkpoint")
    return state


def load_checkpoint_weights(method: AnomalyMethod, ckpt_path: str | Path) -> dict[str, Any]:
    """Load a checkpoint's weights (and the method's own extra state) for evaluation; returns the checkpoint."""
    state = read_checkpoint(ckpt_path)
    method.on_load_checkpoint(state)
    method.load_state_dict(state["state_dict"])
    return state


def instantiate_method(cfg: DictConfig) -> AnomalyMethod:
    """The method from `cfg.method`; its `name` key labels results and is not a constructor argument."""
    kwargs = OmegaConf.to_container(cfg.method, resolve=True)
    kwargs.pop("name", None)
    method = hydra.utils.instantiate(kwargs, _convert_="all")  # plain lists: checkpoints stay weights_only-safe
    if not isinstance(method, AnomalyMethod):
        raise TypeError(f"method._target_={kwargs['_target_']} is not an anomaly_zoo AnomalyMethod subclass")
    return method


def method_name(cfg: DictConfig) -> str:
    return cfg.method.get("name") or cfg.method._target_.rsplit(".", 1)[-1]


def checkpoint_callbacks(folder: Path, datamodule) -> list[ModelCheckpoint]:
    """Always `last.ckpt`; with a validation split (dataset.val_ratio > 0) also `best.ckpt` by val/loss.

    Never selected on the test split.
    """
    callbacks = [ModelCheckpoint(dirpath=folder, save_last=True, save_top_k=0)]
    if getattr(datamodule, "val_ratio", 0) > 0:
        callbacks.append(ModelCheckpoint(dirpath=folder, filename="best", monitor="val/loss", mode="min", save_top_k=1))
    return callbacks


def build_trainer(cfg: DictConfig, method: AnomalyMethod, out: Path, callbacks: list) -> pl.Trainer:
    trainer_kwargs: dict[str, Any] = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer_kwargs.pop("_target_", None)
    trainer_kwargs.update(method.trainer_arguments)  # the method's needs win (e.g. a single epoch)
    logger = hydra.utils.instantiate(cfg.logger) if cfg.get("logger") else False
    if logger:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))  # the resolved config, once
        if method.requires_training:
            callbacks = [*callbacks, LearningRateMonitor(logging_interval="epoch")]
    return pl.Trainer(**trainer_kwargs, logger=logger, callbacks=callbacks, default_root_dir=str(out))


# Keys that do not change a run's results: left out of the key that identifies a finished run.
_KEY_EXCLUDED = ("paths", "hydra", "logger", "force", "eval")


def config_key(cfg: DictConfig) -> str:
    """A stable hash of the resolved config, without output paths and logging settings."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    kept = {k: v for k, v in resolved.items() if k not in _KEY_EXCLUDED}
    return hashlib.sha1(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _finished_run(cfg: DictConfig, key: str) -> Path | None:
    """A results.json of a successful run with the same config key: this run's own folder or, in a multirun,
    any folder of the same sweep directory."""
    from hydra.core.hydra_config import HydraConfig

    candidates = [output_dir(cfg) / "results.json"]
    if _is_multirun():
        candidates += sorted(Path(HydraConfig.get().sweep.dir).glob("**/results.json"))
    for path in candidates:
        try:
            found = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if found.get("config_key") == key and found.get("status", "ok") == "ok":
            return path
    return None


def run_job(cfg: DictConfig, fit: bool) -> dict[str, Any] | None:
    """What the entry points call: skips a run already finished with the same config (unless force=true) and,
    inside a multirun, records a failed run in its results.json instead of stopping the sweep."""
    key = config_key(cfg)
    if not cfg.get("force", False):
        done = _finished_run(cfg, key)
        if done is not None:
            print(f"skipping: a finished run with the same config is at {done} (force=true re-runs it)")
            return None
    start = time.perf_counter()
    try:
        return run(cfg, fit=fit)
    except Exception as err:
        if not _is_multirun():
            raise
        log.exception("run failed; recorded in results.json, the sweep goes on")
        try:
            config = OmegaConf.to_container(cfg, resolve=True)
        except Exception:  # the failure may be in the config itself
            config = OmegaConf.to_container(cfg, resolve=False)
        write_results(
            output_dir(cfg), method_name(cfg), cfg.dataset.name, config, {}, {},
            time.perf_counter() - start,
            extra={"status": "failed", "error": f"{type(err).__name__}: {err}", "config_key": key,
                   "traceback": traceback.format_exc(limit=20)},
        )  # fmt: skip
        return None


def run(cfg: DictConfig, fit: bool) -> dict[str, Any]:
    """Fit (when asked and the method learns), then test; returns the results payload."""
    start = time.perf_counter()
    out = output_dir(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = hydra.utils.instantiate(cfg.dataset)
    method = instantiate_method(cfg)
    datamodule.use_train_split = method.requires_training
    datamodule.views = method.input_views()
    collector = EvaluationCollector()
    callbacks: list = [collector]
    if fit and method.requires_training:
        callbacks += checkpoint_callbacks(out / "checkpoints", datamodule)
    trainer = build_trainer(cfg, method, out, callbacks)

    if fit and method.requires_training:
        resume = cfg.get("ckpt_path")
        if resume:  # resume: weights, optimizer, scheduler, epoch and the method's RNG state
            read_checkpoint(resume)  # a clear error for a bad file before Lightning touches it
        trainer.fit(method, datamodule=datamodule, ckpt_path=resume, weights_only=True)
        if trainer.is_global_zero:
            calibrate_and_record(method, datamodule, out / "checkpoints", cfg.eval.threshold_false_alarm_rate)
    elif cfg.get("ckpt_path"):
        load_checkpoint_weights(method, cfg.ckpt_path)
    elif method.requires_training:
        raise ValueError(
            f"method {method_name(cfg)} must be trained: run anomaly_zoo.train, "
            "or pass ckpt_path=/path/to/checkpoint.ckpt to anomaly_zoo.test"
        )
    trainer.test(method, datamodule=datamodule)
    if not trainer.is_global_zero:
        return {}

    runtime = time.perf_counter() - start
    resolved = OmegaConf.to_container(cfg, resolve=True)
    name = method_name(cfg)
    path = write_results(
        out,
        name,
        cfg.dataset.name,
        resolved,
        collector.per_category,
        collector.mean,
        runtime,
        extra={
            "status": "ok",
            "config_key": config_key(cfg),
            "protocol": cfg.dataset.protocol,
            "eval_size": list(datamodule.test_dataset.size),
            **method.result_metadata(),
        },
    )
    print(f"\n{name} on {cfg.dataset.name} ({cfg.dataset.protocol}), {runtime:.1f} s\n")
    print(metrics_table(collector.per_category, collector.mean))
    overlays = write_heatmaps(collector, datamodule, out / "heatmaps", cfg.eval.heatmaps_per_category)
    if isinstance(trainer.logger, WandbLogger) and overlays:
        trainer.logger.log_image(key="heatmaps", images=[str(p) for p in overlays], caption=[p.stem for p in overlays])
    if isinstance(trainer.logger, WandbLogger):
        trainer.logger.experiment.finish()  # one W&B run per job, also inside a multirun
    print(f"\nresults: {path}\nheatmaps: {len(overlays)} PNGs in {out / 'heatmaps'}")
    val_loss = trainer.callback_metrics.get("val/loss")
    return {
        "results_path": str(path),
        "per_category": collector.per_category,
        "mean": collector.mean,
        # what a hyper-parameter sweeper may minimise: validation data only, never the test metrics
        "objective": None if val_loss is None else float(val_loss),
    }


def predict(cfg: DictConfig) -> list:
    """`anomaly_zoo.predict`: a folder of new images → scores.csv, overlays and report.html."""
    from anomaly_zoo.inference import predict_folder

    method = instantiate_method(cfg)
    threshold, source = cfg.get("threshold"), "given on the command line"
    if cfg.get("ckpt_path"):
        recorded = load_checkpoint_weights(method, cfg.ckpt_path).get("threshold")
        if threshold is None and recorded:
            threshold = recorded["value"]
            source = (
                f"from the checkpoint: false-alarm rate {recorded['false_alarm_rate']:g} on "
                f"{recorded['validation_images']} normal validation images"
            )
    elif method.requires_training:
        raise ValueError(f"method {method_name(cfg)} must be trained: pass ckpt_path=/path/to/checkpoint.ckpt")
    if threshold is None:
        log.warning("no decision threshold (none given, none in the checkpoint): scores only")
    accelerator = str(cfg.trainer.get("accelerator", "cpu"))
    device = "cuda" if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available() else "cpu"
    rows = predict_folder(
        method.to(device), cfg.input, cfg.output, cfg.dataset.image_size, threshold, source,
        batch_size=cfg.batch_size, category=cfg.get("category"), overwrite=cfg.overwrite,
    )  # fmt: skip
    print(f"{len(rows)} images → {Path(cfg.output) / 'scores.csv'}, {Path(cfg.output) / 'report.html'}")
    return rows


def write_heatmaps(collector: EvaluationCollector, datamodule, folder: Path, per_category: int) -> list[Path]:
    """The highest-scoring defective images of each category, on a colour scale shared within the category."""
    if per_category <= 0:
        return []
    buf, samples = collector.buffer, datamodule.test_dataset.samples
    categories = np.array([s.category for s in samples])
    written = []
    for category in dict.fromkeys(categories.tolist()):
        idx = np.flatnonzero(categories == category)
        vmin, vmax = float(buf.maps[idx].min()), float(buf.maps[idx].max())
        defective = [i for i in idx if samples[i].label == 1]
        for i in sorted(defective, key=lambda i: -buf.scores[i])[:per_category]:
            sample = samples[i]
            name = f"{category}_{Path(sample.image_path).parent.name}_{Path(sample.image_path).stem}.png"
            written.append(
                save_overlay(
                    sample.image_path,
                    buf.maps[i],
                    folder / name,
                    mask=buf.masks[i],
                    score=buf.scores[i],
                    vmin=vmin,
                    vmax=vmax,
                    title=f"{category} / {Path(sample.image_path).parent.name}",
                )
            )
    return written
