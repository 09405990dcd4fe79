"""Checks before any work: config values (one line per bad key, with the allowed range) and the whole test split
(every unreadable image, missing or wrong-size mask listed at once), so that nothing fails after hours of training."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from PIL import Image, UnidentifiedImageError

from anomaly_zoo.data.image_dataset import displayed_size
from anomaly_zoo.metrics.protocols import PROTOCOLS

#: Below this the backbones' stride-16 feature grid is a single cell or empty.
MIN_IMAGE_SIZE = 32


class ConfigError(ValueError):
    """One or more config values are outside their allowed range (one line each)."""


class DataValidationError(ValueError):
    """Files of a split cannot be used as they are (all of them listed)."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check(errors: list[str], key: str, value: Any, ok: Callable[[Any], bool], allowed: str) -> None:
    try:
        good = ok(value)
    except (TypeError, ValueError):
        good = False
    if not good:
        errors.append(f"{key}={value!r}: must be {allowed}")


def _available_devices(accelerator: str) -> tuple[int, str]:
    import torch

    if accelerator in ("gpu", "cuda"):
        return torch.cuda.device_count(), "GPUs visible"
    if accelerator == "cpu":
        return os.cpu_count() or 1, "CPU cores"
    return max(torch.cuda.device_count(), 1), "devices"


def _devices_error(trainer: DictConfig) -> str | None:
    devices, accelerator = trainer.get("devices", 1), str(trainer.get("accelerator", "auto"))
    if devices in ("auto", -1, "-1") or devices is None:
        return None
    asked = len(devices) if isinstance(devices, list | tuple) or OmegaConf.is_list(devices) else devices
    if not _is_int(asked) or asked < 1:
        return f"trainer.devices={devices!r}: must be a positive integer, a list of device ids, or auto"
    available, what = _available_devices(accelerator)
    if asked > available:
        hint = "; use trainer=cpu" if accelerator in ("gpu", "cuda") and available == 0 else ""
        return f"trainer.devices={devices!r}: only {available} {what} here (trainer.accelerator={accelerator}){hint}"
    return None


def _wandb_error(cfg: DictConfig) -> str | None:
    """logger=wandb online without a login fails deep inside wandb; say how to log in or run offline instead."""
    target = str((cfg.get("logger") or {}).get("_target_", ""))
    if not target.endswith("WandbLogger") or os.environ.get("WANDB_MODE") in ("offline", "disabled", "dryrun"):
        return None
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    logged_in = os.environ.get("WANDB_API_KEY") or (netrc.is_file() and "api.wandb.ai" in netrc.read_text())
    if logged_in:
        return None
    return ("logger=wandb: no W&B login (WANDB_API_KEY or `wandb login`); to log locally and upload later, "
            "run with WANDB_MODE=offline (then `wandb sync <run folder>/wandb/offline-run-*`)")  # fmt: skip


def _weight_sources(tree: Any, key: str = "") -> list[tuple[str, str, str | None]]:
    """(config key, hub repo or "", local file or None) of every pretrained model the config will load."""
    found: list[tuple[str, str, str | None]] = []
    if isinstance(tree, dict):
        if tree.get("weights") == "hub" and tree.get("timm_name"):
            found.append((key, f"timm/{tree['timm_name']}", None))
        elif tree.get("weights") == "file":
            found.append((key, "", tree.get("weights_path") or ""))
        elif tree.get("weights") == "url":  # a download outside the HF hub (weights_path is the URL)
            found.append((key, str(tree.get("weights_path") or ""), None))
        elif isinstance(tree.get("model_id"), str):  # diffusers pipelines (DIVAD's Stable Diffusion)
            found.append((key, tree["model_id"], None))
        for k, v in tree.items():
            found += _weight_sources(v, f"{key}.{k}" if key else k)
    return list({(repo, file): (k, repo, file) for k, repo, file in reversed(found)}.values())[::-1]  # once each


def missing_weights(cfg: DictConfig) -> list[str]:
    """Every pretrained model the run needs that is not available here, named at once (before the first one fails
    deep inside timm or diffusers): weights files that do not exist and, offline (HF_HUB_OFFLINE=1), hub models
    that are not in the Hugging Face cache."""
    tree = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("method", "backbone") if cfg.get(k) is not None}
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    cache = Path(
        os.environ.get("HF_HUB_CACHE")
        or Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"
    )
    missing = []
    for key, repo, file in _weight_sources(tree):
        if file is not None and not Path(file).expanduser().is_file():
            missing.append(f"{key}: weights=file but weights_path={file!r} is not a file")
        elif repo.startswith(("http://", "https://")):
            from anomaly_zoo.backbones.feature_extractor import url_cache_path

            if offline and not url_cache_path(repo).is_file():
                missing.append(f"{key}: {repo} is not in {url_cache_path(repo)} (weights=url, offline)")
        elif repo and offline and not (cache / f"models--{repo.replace('/', '--')}").is_dir():
            missing.append(f"{key}: {repo} (Hugging Face hub) is not in {cache}")
    return missing


def _root_error(value: Any, name: str, key: str = "dataset.root") -> str | None:
    """`dataset.root` must be a folder; the synthetic set is generated where it is missing, so there only a file in
    the way (the root itself or a folder above it) is an error."""
    root = Path(str(value)).expanduser()
    blocking = next((p for p in (root, *root.parents) if p.exists()), None)
    if blocking is not None and not blocking.is_dir():
        where = "is a file, not a folder" if blocking == root else f"is below {blocking}, a file"
        return f"{key}={value!r}: {where} (set {key}=/path/to/{name})"
    if name != "synthetic" and not root.is_dir():
        return f"{key}={value!r}: no such folder (set {key}=/path/to/{name})"
    return None


def _dataset_errors(ds: DictConfig) -> list[str]:
    """The root (a union: its members and each member's root)."""
    if ds.get("members") is None:
        return [e for e in [_root_error(ds.get("root"), str(ds.get("name")))] if e]
    from anomaly_zoo.data.union import member_roots, union_config_errors

    errors = union_config_errors(ds)
    return errors + [e for key, root, name in member_roots(ds) if (e := _root_error(root, name, key))]


def validate_config(cfg: DictConfig) -> None:
    """Every bad value at once, one line each: `key=value: must be <allowed range>`."""
    errors: list[str] = []
    ds, trainer = cfg.dataset, cfg.trainer
    size = ds.get("image_size")
    sizes = list(size) if OmegaConf.is_list(size) or isinstance(size, list | tuple) else [size]
    _check(errors, "dataset.image_size", size,
           lambda _: len(sizes) in (1, 2) and all(_is_int(s) and s >= MIN_IMAGE_SIZE for s in sizes),
           f"an integer >= {MIN_IMAGE_SIZE} or [height, width] of such integers")  # fmt: skip
    for key in ("train_batch_size", "eval_batch_size"):
        _check(errors, f"dataset.{key}", ds.get(key), lambda v: _is_int(v) and v >= 1, "an integer >= 1")
    _check(errors, "dataset.num_workers", ds.get("num_workers"), lambda v: _is_int(v) and v >= 0, "an integer >= 0")
    _check(errors, "dataset.val_ratio", ds.get("val_ratio"), lambda v: 0.0 <= float(v) < 1.0, "in [0, 1)")
    if ds.get("name") == "folder":
        _check(errors, "dataset.normal_test_ratio", ds.get("normal_test_ratio"), lambda v: 0.0 < float(v) < 1.0,
               "in (0, 1)")  # fmt: skip
    errors += _dataset_errors(ds)
    _check(errors, "trainer.max_epochs", trainer.get("max_epochs"),
           lambda v: v is None or (_is_int(v) and v >= -1 and v != 0), "an integer >= 1 (or -1: no limit)")  # fmt: skip
    if (devices := _devices_error(trainer)) is not None:
        errors.append(devices)
    _check(errors, "checkpoint.every_n_epochs", cfg.get("checkpoint", {}).get("every_n_epochs", 1),
           lambda v: _is_int(v) and v >= 1, "an integer >= 1")  # fmt: skip
    _check(errors, "eval.heatmaps_per_category", cfg.eval.get("heatmaps_per_category"),
           lambda v: _is_int(v) and v >= 0, "an integer >= 0")  # fmt: skip
    for key in ("bootstrap_resamples", "pixel_bootstrap_resamples"):
        _check(errors, f"eval.{key}", cfg.eval.get(key, 0), lambda v: _is_int(v) and v >= 0,
               "an integer >= 0 (0: no intervals)")  # fmt: skip
    _check(errors, "eval.threshold_false_alarm_rate", cfg.eval.get("threshold_false_alarm_rate"),
           lambda v: 0.0 <= float(v) < 1.0, "in [0, 1)")  # fmt: skip
    protocol = (cfg.get("evaluation") or {}).get("protocol", "exact")
    if protocol not in PROTOCOLS:
        errors.append(f"evaluation.protocol={protocol!r}: must be one of {', '.join(PROTOCOLS)}")
    _check(errors, "existing_folder", cfg.get("existing_folder", "refuse"), lambda v: v in ("refuse", "version"),
           "refuse or version")  # fmt: skip
    ckpt = cfg.get("ckpt_path")
    if ckpt not in (None, "last") and not Path(str(ckpt)).expanduser().is_file():
        errors.append(f"ckpt_path={ckpt!r}: no such checkpoint file (or ckpt_path=last: the run folder's newest)")
    if (wandb := _wandb_error(cfg)) is not None:
        errors.append(wandb)
    if (cfg.get("backbone") or {}).get("weights") == "checkpoint" and (
        not ckpt or cfg.get("task_name") == "train"
    ):  # the architecture alone would be random weights
        errors.append("backbone.weights=checkpoint: only for test/predict/convert with ckpt_path=... (the checkpoint "
                      "holds the backbone); choose backbone.weights=hub|file|package")  # fmt: skip
    if weights := missing_weights(cfg):
        errors.append(f"{len(weights)} pretrained model(s) missing (offline): " + "; ".join(weights)
                      + ". Download them where the hub is reachable (then cached) or use weights=file")  # fmt: skip
    if errors:
        raise ConfigError("\n".join(errors))


def _image_problem(path: str) -> tuple[str | None, tuple[int, int] | None]:
    """(problem, (width, height)) of one file, reading its header and checking its data is complete."""
    if not Path(path).is_file():
        return "missing file", None
    try:
        with Image.open(path) as img:
            size = displayed_size(img)  # as the reader turns it (EXIF orientation): masks are compared so
            img.verify()  # checksums and truncation, without decoding the pixels
        return None, size
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as err:
        return f"unreadable ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'no detail'})", None


def check_split(samples, require_masks: bool, split: str = "test", shown: int = 20) -> None:
    """Every image readable; every defective image has a mask (unless require_masks=false) of its image's size."""
    problems: list[str] = []
    for sample in samples:
        problem, size = _image_problem(sample.image_path)
        if problem:
            problems.append(f"{sample.image_path}: {problem}")
            continue
        if not sample.masks:
            if sample.label == 1 and require_masks:
                problems.append(f"{sample.image_path}: defective image without a mask")
            continue
        for mask_path in sample.masks:  # MVTec LOCO: several files per image
            mask_problem, mask_size = _image_problem(mask_path)
            if mask_problem:
                problems.append(f"{mask_path} (mask of {Path(sample.image_path).name}): {mask_problem}")
            elif mask_size != size:
                assert mask_size is not None and size is not None  # both files were read without a problem
                problems.append(f"{mask_path}: mask is {mask_size[0]}x{mask_size[1]}, its image "
                                f"{sample.image_path} is {size[0]}x{size[1]} (width x height)")  # fmt: skip
    if problems:
        more = f"\n  ... and {len(problems) - shown} more" if len(problems) > shown else ""
        hint = " Fix or remove these files" + (
            ", or set dataset.require_masks=false to score defective images without masks with an empty mask"
            if any("without a mask" in p for p in problems)
            else ""
        )
        raise DataValidationError(f"{len(problems)} problem(s) in the {split} split, found before any work:\n  "
                                  + "\n  ".join(problems[:shown]) + more + "\n" + hint + ".")  # fmt: skip
