"""The one run path behind `anomaly_zoo.train` and `anomaly_zoo.test`:

config → datamodule, method, logger, trainer → fit (if the method learns) → test → metrics →
results.json, a printed table, heatmap overlays.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, cast

import hydra
import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from anomaly_zoo import config_keys
from anomaly_zoo.checkpointing import AtomicCheckpointIO, RecordModel, checkpoint_callbacks, newest_checkpoint
from anomaly_zoo.checkpoints.categories import report_checkpoint_categories
from anomaly_zoo.checkpoints.model import (
    adopt_if_readable,
    check_model_matches,
    load_checkpoint_weights,
    method_name,
    model_metadata,
)
from anomaly_zoo.checkpoints.read import read_checkpoint
from anomaly_zoo.cross_dataset import dataset_record, require_ground_truth, test_context, test_datamodule
from anomaly_zoo.errors import one_line
from anomaly_zoo.evaluation import EvaluationCollector, write_results
from anomaly_zoo.evaluation.cost import cost_record
from anomaly_zoo.evaluation.dataset_metrics import check_dataset_inputs, request_for
from anomaly_zoo.evaluation.datasets import dataset_means
from anomaly_zoo.evaluation.per_image import per_defect
from anomaly_zoo.evaluation.threshold import DecisionThreshold, recorded_threshold
from anomaly_zoo.methods.base import AnomalyMethod
from anomaly_zoo.metrics.bootstrap import DEFAULT_RESAMPLES
from anomaly_zoo.reporting import metrics_table, save_overlay
from anomaly_zoo.run_folder import (
    RunFolderBusyError,
    RunFolderError,
    claim_run_folder,
    config_key,
    evaluation_config,
    finished_run,
    is_multirun,
    output_dir,
    recorded_run,
    release_run_folder,
    resolved_config,
    save_hydra_record,
)
from anomaly_zoo.trainer_setup import apply_method_trainer_arguments, instantiate_callbacks, instantiate_trainer
from anomaly_zoo.validation import check_split, validate_config

log = logging.getLogger(__name__)


def instantiate_method(cfg: DictConfig) -> AnomalyMethod:
    """The method from `cfg.method`; its `name` key labels results and is not a constructor argument."""
    kwargs = cast(dict[str, Any], OmegaConf.to_container(cfg.method, resolve=True))  # a DictConfig: a dict
    kwargs.pop("name", None)
    method = hydra.utils.instantiate(kwargs, _convert_="all")  # plain lists: checkpoints stay weights_only-safe
    if not isinstance(method, AnomalyMethod):
        raise TypeError(f"method._target_={kwargs['_target_']} is not an anomaly_zoo AnomalyMethod subclass")
    return method


def instantiate_datamodule(cfg: DictConfig, method: AnomalyMethod) -> Any:
    """The datamodule from `cfg.dataset`, told what the method needs: the train split only for methods that learn,
    and the method's input views."""
    make = hydra.utils.instantiate(cfg.dataset, _partial_=True)
    return make(use_train_split=method.requires_training, views=method.input_views())


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "💡 Tip" not in record.getMessage()


def silence_expected_warnings(method: AnomalyMethod) -> None:
    """Lightning's warnings that are expected for this method (so that the real ones stand out)."""
    expected = [
        r".*in eval mode at the start of training.*",  # frozen backbones are in eval mode by design
        r".*does not have many workers.*",
        r".*smaller than the logging interval.*",
    ]
    if not method.automatic_optimization:  # e.g. PatchKNN: one pass over the data, no optimizer
        expected.append(r".*configure_optimizers.* returned `None`.*")
    if type(method).validation_step is pl.LightningModule.validation_step:
        expected.append(r".*val_dataloader.* but have no `validation_step`.*")
    for pattern in expected:
        warnings.filterwarnings("ignore", message=pattern)
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropTips) for f in rank_zero.filters):
        rank_zero.addFilter(_DropTips())  # advertisements for other packages


def build_trainer(cfg: DictConfig, method: AnomalyMethod, out: Path, callbacks: list) -> pl.Trainer:
    """`trainer._target_` from the config, with the method's own trainer settings (they win, logged), the runner's
    `callbacks` (they need the run's state) followed by the configured ones (`callbacks` group)."""
    silence_expected_warnings(method)
    trainer_cfg = cast(dict[str, Any], OmegaConf.to_container(cfg.trainer, resolve=True))
    apply_method_trainer_arguments(trainer_cfg, method.trainer_arguments, method_name(cfg))
    logger_cfg = cfg.get("logger")
    extra: dict[str, Any] = {}
    if logger_cfg and str(logger_cfg.get("_target_", "")).endswith("WandbLogger") and not logger_cfg.get("group"):
        # runs that differ only in their seed: one W&B group (the leaderboard's row)
        extra["group"] = config_keys.seedless_key(resolved_config(cfg))
    logger: Any = hydra.utils.instantiate(logger_cfg, **extra) if logger_cfg else False  # a Lightning logger or False
    if logger:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))  # the resolved config, once
    group = cfg.get("callbacks")
    configured = cast(dict[str, Any], OmegaConf.to_container(group, resolve=True)) if group is not None else None
    callbacks = [*callbacks, *instantiate_callbacks(configured, logger, method.requires_training, trainer_cfg)]
    return instantiate_trainer(trainer_cfg, logger=logger, callbacks=callbacks, default_root_dir=str(out),
                               plugins=[AtomicCheckpointIO()])  # fmt: skip


def run_job(cfg: DictConfig, fit: bool) -> dict[str, Any] | None:
    """What the entry points call: skips a run already finished with the same config (unless force=true; then it
    returns only that run's results path and recorded objective) and, inside a multirun, records a failed run in its
    results.json instead of stopping the sweep."""
    cfg = evaluation_config(cfg, fit)  # the key of a test includes the model it takes from the checkpoint
    key = config_key(cfg)
    if not cfg.get("force", False):
        done = finished_run(cfg, key)
        if done is not None:
            print(f"skipping: a finished run with the same config is at {done} (force=true re-runs it)")
            # a resumed search gets the finished trial's objective back (hydra/sweeper=optuna)
            return {"results_path": str(done), "objective": json.loads(done.read_text()).get("validation_loss")}
    start = time.perf_counter()
    try:
        return run(cfg, fit=fit)
    except RunFolderBusyError as busy:
        print(f"skipping: {busy}; that process runs it")
        return None
    except RunFolderError:
        raise  # never write into another run's folder, not even a failure record
    except Exception as err:
        if not is_multirun():
            raise
        from anomaly_zoo.errors import record_failure

        record_failure(str(output_dir(cfg)), one_line(err))
        found = recorded_run(output_dir(cfg))
        if found is not None and found.get("config_key") != key and found.get("status") != "failed":
            # failed before claiming the folder (e.g. a bad value): the run already there keeps its results.json
            log.error("run failed (%s); not recorded in %s, which holds another config's run; the sweep goes on",
                      one_line(err), output_dir(cfg))  # fmt: skip
            return None
        log.error("run failed (%s); recorded in results.json, the sweep goes on", one_line(err))
        write_results(
            output_dir(cfg), method_name(cfg), cfg.dataset.name, resolved_config(cfg), {}, {},
            time.perf_counter() - start,
            extra={"status": "failed", "error": one_line(err), "config_key": key,
                   "traceback": traceback.format_exc(limit=20)},
        )  # fmt: skip
        return None


def evaluation_protocol(cfg: DictConfig) -> str:
    """`evaluation.protocol` (exact unless a preset or the user asks for an official evaluation's)."""
    return str((cfg.get("evaluation") or {}).get("protocol", "exact"))


def run(cfg: DictConfig, fit: bool) -> dict[str, Any]:
    """Fit (when asked and the method learns), then test; returns the results payload."""
    start = time.perf_counter()
    # a test's folder and the model its checkpoint records, before validation: the checkpoint, not a weights
    # source, holds the backbone
    cfg = evaluation_config(cfg, fit)
    validate_config(cfg)
    key = config_key(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    method = instantiate_method(cfg)
    datamodule = instantiate_datamodule(cfg, method)
    test_dm = test_datamodule(cfg, method, datamodule)  # the same one unless test_dataset=<name> (cross-dataset)
    require_ground_truth(cfg, test_dm)
    method.check_normalization(datamodule.normalization)
    for dm in dict.fromkeys((datamodule, test_dm)):
        dm.prepare_data()  # what fit/test would do first (generate the synthetic set, download where asked)
        dm.setup("fit" if fit and dm is datamodule else "test")
    check_split(test_dm.test_dataset.samples, test_dm.require_masks)  # before hours of training
    check_dataset_inputs(request_for(test_dm.name), test_dm)  # e.g. SegF1 without validation images
    auto_resume = claim_run_folder(cfg, key, fit)  # after the checks: a refused config leaves no record behind
    out = output_dir(cfg)  # existing_folder=version may have moved the run
    try:
        return _run_claimed(cfg, fit, key, method, (datamodule, test_dm), auto_resume, start)
    finally:
        release_run_folder(out)


def _run_claimed(
    cfg: DictConfig,
    fit: bool,
    key: str,
    method: AnomalyMethod,
    datamodules: tuple,
    auto_resume: Path | None,
    start: float,
) -> dict[str, Any]:
    """`run` once the folder is claimed (and held); `datamodules`: the fitted one and the tested one."""
    datamodule, test_dm = datamodules
    out = output_dir(cfg)
    collector = EvaluationCollector(
        evaluation_protocol(cfg), int(cfg.eval.get("bootstrap_resamples", DEFAULT_RESAMPLES)), int(cfg.seed),
        int(cfg.eval.get("pixel_bootstrap_resamples", 0)), request_for(test_dm.name),
    )  # fmt: skip
    threshold_callback: DecisionThreshold | None = None
    checkpoint: dict[str, Any] | None = None
    known: dict[str, Any] | None = None  # the test's categories as the checkpoint knows them
    fit_s: float | None = None
    val_loss: float | None = None
    callbacks: list = [collector]
    if fit and method.requires_training:
        every = int(cfg.get("checkpoint", {}).get("every_n_epochs", 1))
        validation = datamodule.val_dataloader if datamodule.val_dataset else None
        threshold_callback = DecisionThreshold(validation, cfg.eval.threshold_false_alarm_rate)
        callbacks += [threshold_callback, *checkpoint_callbacks(out / "checkpoints", datamodule, every),
                      RecordModel(model_metadata(cfg, datamodule))]  # fmt: skip
    trainer = build_trainer(cfg, method, out, callbacks)

    if fit and method.requires_training:
        resume = cfg.get("ckpt_path")
        if resume == "last":
            resume = newest_checkpoint(out)
            if resume is None:
                log.warning("ckpt_path=last: no checkpoint in %s yet, training from the start", out)
        elif resume is None and auto_resume is not None:
            resume = auto_resume
            print(f"resuming an unfinished run of the same config from {resume}")
        if resume:  # resume: weights, optimizer, scheduler, epoch and the method's RNG state
            check_model_matches(method_name(cfg), read_checkpoint(resume), resume)  # clear errors first
        method.setup_fit(datamodule.training_data())
        fit_start = time.perf_counter()
        try:
            trainer.fit(method, datamodule=datamodule, ckpt_path=resume and str(resume), weights_only=True)
        except SIGTERMException:
            _stopped_by_signal(out)
        fit_s = time.perf_counter() - fit_start
        val_loss = _validation_loss(trainer)  # read now: testing resets the trainer's callback metrics
    elif cfg.get("ckpt_path"):
        checkpoint = load_checkpoint_weights(method, cfg.ckpt_path, method_name(cfg))
        known = report_checkpoint_categories(checkpoint, datamodule, method, str(cfg.ckpt_path))
    elif method.requires_training:
        raise ValueError(
            f"method {method_name(cfg)} must be trained: run anomaly_zoo.train, "
            "or pass ckpt_path=/path/to/checkpoint.ckpt to anomaly_zoo.test"
        )
    method.setup_test(test_context(datamodule, test_dm))
    test_start = time.perf_counter()
    trainer.test(method, datamodule=test_dm)
    test_s = time.perf_counter() - test_start
    if not trainer.is_global_zero:
        return {}
    threshold = threshold_callback.record if threshold_callback else (checkpoint and recorded_threshold(checkpoint))

    runtime = time.perf_counter() - start
    resolved = cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=True))  # a DictConfig: a dict
    name = method_name(cfg)
    dataset_name, dataset_extra = dataset_record(cfg, datamodule, test_dm)
    datasets = (
        dataset_means(test_dm.category_sources(), collector.per_category) if getattr(test_dm, "members", None) else {}
    )
    path = write_results(
        out,
        name,
        dataset_name,
        resolved,
        collector.per_category,
        collector.mean,
        runtime,
        extra={
            "status": "ok",
            "config_key": key,
            "protocol": cfg.dataset.protocol,
            "evaluation": collector.protocol.record(),
            "validation_loss": val_loss,
            "eval_size": list(test_dm.test_dataset.size),
            "cost": cost_record(method, trainer, fit_s, test_s, len(collector.images.get("score", []))),
            "intervals": collector.intervals,
            "decision_threshold": threshold or None,
            "per_defect": per_defect(collector.images, threshold["value"] if threshold else None),
            "images": collector.images,
            **dataset_extra,
            **({"dataset_metrics": collector.dataset_metrics} if collector.dataset_metrics else {}),
            **({"datasets": datasets} if datasets else {}),
            **({"checkpoint_categories": known} if known else {}),
            **method.result_metadata(),
        },
    )
    scored = "" if not collector.protocol.official else f", evaluated as {collector.protocol.name}"
    print(f"\n{name} on {dataset_name} ({cfg.dataset.protocol}{scored}), {runtime:.1f} s\n")
    print(metrics_table(collector.per_category, collector.mean))
    if datasets:  # a union: each member's mean, as the official union logs' per-dataset reading
        print("\n" + metrics_table({k: v["mean"] for k, v in datasets.items()}, collector.mean, label="dataset"))
    overlays = write_heatmaps(collector, test_dm, out / "heatmaps", cfg.eval.heatmaps_per_category)
    if isinstance(trainer.logger, WandbLogger) and overlays:
        trainer.logger.log_image(key="heatmaps", images=[str(p) for p in overlays], caption=[p.stem for p in overlays])
    if isinstance(trainer.logger, WandbLogger):
        trainer.logger.experiment.finish()  # one W&B run per job, also inside a multirun
    print(f"\nresults: {path}\nheatmaps: {len(overlays)} PNGs in {out / 'heatmaps'}")
    return {
        "results_path": str(path),
        "per_category": collector.per_category,
        "mean": collector.mean,
        # what a hyper-parameter sweeper may minimise: validation data only, never the test metrics
        "objective": val_loss,
    }


def _validation_loss(trainer: pl.Trainer) -> float | None:
    """The last `val/loss` a method logged (None: it has none), the objective of a hyper-parameter search."""
    value = trainer.callback_metrics.get("val/loss")
    return None if value is None else float(value)


def _stopped_by_signal(out: Path) -> None:
    """Lightning stopped fitting on SIGTERM (pre-emption, scancel): say what is kept and exit 143 (128 + SIGTERM)."""
    last = newest_checkpoint(out)
    epoch = cast(int, read_checkpoint(last).get("epoch")) if last else 0  # Lightning checkpoints record the epoch
    kept = f"{last} (after epoch {epoch + 1})" if last else "no checkpoint yet (the first epoch had not ended)"
    print(f"stopped by SIGTERM; kept {kept}. Run the same command again to resume it.", flush=True)
    raise SystemExit(143)


def predict(cfg: DictConfig) -> list:
    """`anomaly_zoo.predict`: a folder of new images → scores.csv, overlays and report.html."""
    from anomaly_zoo.inference import predict_folder

    cfg = adopt_if_readable(cfg)
    validate_config(cfg)
    state = read_checkpoint(cfg.ckpt_path) if cfg.get("ckpt_path") else None
    method = instantiate_method(cfg)
    method.check_normalization(cfg.dataset.normalization)
    save_hydra_record(cfg)  # the command's record in its own (timestamped) Hydra folder, as train/test keep one
    threshold, source = cfg.get("threshold"), "given on the command line"
    if state is not None:
        recorded = recorded_threshold(load_checkpoint_weights(method, cfg.ckpt_path, method_name(cfg)))
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
        normalization=cfg.dataset.normalization, submission=cfg.get("submission"),
    )  # fmt: skip
    print(f"{len(rows)} images → {Path(cfg.output) / 'scores.csv'}, {Path(cfg.output) / 'report.html'}")
    return rows


def write_heatmaps(collector: EvaluationCollector, datamodule, folder: Path, per_category: int) -> list[Path]:
    """The highest-scoring defective images of each category, on a colour scale shared within the category."""
    if per_category <= 0:
        return []
    buf, samples = collector.buffer, datamodule.test_dataset.samples
    assert buf is not None  # filled by the test run on this (global-zero) process
    categories = np.array([s.category for s in samples])
    written = []
    for category in dict.fromkeys(categories.tolist()):
        idx = np.flatnonzero((categories == category) & buf.filled)  # a partial split (debug=fast): scored only
        if not len(idx):
            continue
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
