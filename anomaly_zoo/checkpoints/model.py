"""What a checkpoint says about its model: the metadata it records, adopting it for test/predict, the identity check,
and loading its weights (any format `read` reads; official OneNIP/UniAD files are converted on the way).

A checkpoint holds every weight of its model, the backbone's included, so test/predict build the backbone without
a weight source (`backbone.weights=checkpoint`) and take its tensors from the file: a checkpoint never depends on
the file or hub model its backbone once came from. What identifies the model is what defines the network: the
method, the input size, the backbone's architecture (every backbone key but `weights`, `weights_path`, its label
`name` and the pretrained tag of `timm_name`) and the method's `architecture_keys`. A run that sets one of these to
another value is refused, naming the keys; the rest (inference options) may differ.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, cast

import hydra
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from anomaly_zoo import config_keys
from anomaly_zoo.checkpoints.read import METADATA_KEY, read_checkpoint
from anomaly_zoo.methods.base import AnomalyMethod, CheckpointFormatError

log = logging.getLogger(__name__)

#: Backbone keys that say where weights came from or label the config, not what the network is.
_BACKBONE_SOURCE_KEYS = ("weights", "weights_path", "name")


class CheckpointMismatchError(ValueError):
    """A checkpoint was written for another method, backbone or input size than the run asks for."""


def method_name(cfg: DictConfig) -> str:
    return cfg.method.get("name") or cfg.method._target_.rsplit(".", 1)[-1]


def model_metadata(cfg: DictConfig, datamodule: Any) -> dict[str, Any]:
    """What a checkpoint records about its model, so that test/predict need not be told again."""
    return {
        "method": method_name(cfg),
        "method_config": OmegaConf.to_container(cfg.method, resolve=True),
        "backbone": OmegaConf.to_container(cfg.backbone, resolve=True) if cfg.get("backbone") else None,
        "image_size": list(datamodule.test_dataset.size),
        "config_key": config_keys.config_key(_container(cfg)),
        # the training categories and where they came from: a test on other data says which it knows
        # (checkpoints/categories.py)
        "categories": {name: list(source) for name, source in datamodule.category_sources().items()},
        "members": datamodule.member_record(),
    }


def _container(cfg: DictConfig) -> dict[str, Any]:
    try:
        return cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=True))
    except Exception:  # outside a Hydra app `${hydra:...}` keys do not resolve (convert composed in Python)
        return cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=False))


def from_checkpoint(backbone: dict[str, Any]) -> dict[str, Any]:
    """A backbone config whose weights are the checkpoint's (no file or hub model needed)."""
    return {**backbone, "weights": "checkpoint", "weights_path": None}


# ---------------------------------------------------------------- which keys a run sets
def _config_dirs() -> list[Path]:
    from hydra.core.hydra_config import HydraConfig

    dirs = [Path(__file__).resolve().parents[2] / "conf"]
    if HydraConfig.initialized():
        for source in HydraConfig.get().runtime.config_sources:
            if source.schema == "file":
                dirs.insert(0, Path(source.path))
    return dirs


def _experiment_keys(name: str) -> set[str]:
    """The keys an experiment preset sets: its group choices (`override /backbone: x` → "backbone") and values."""
    for folder in _config_dirs():
        path = folder / "experiment" / f"{name}.yaml"
        if path.is_file():
            preset = cast(dict[str, Any], OmegaConf.to_container(OmegaConf.load(path)))
            keys = set()
            for entry in preset.pop("defaults", None) or []:
                if isinstance(entry, str) and entry != "_self_":  # another preset it builds on: its keys too
                    keys |= _experiment_keys(entry.removeprefix("/experiment/"))
                for group in entry if isinstance(entry, dict) else []:
                    keys.add(group.removeprefix("override").strip().lstrip("/"))
            return keys | set(config_keys.flatten(preset))
    return {"method", "backbone", "dataset"}  # not found: as if it set every group


def explicit_keys() -> set[str] | None:
    """The config keys the command line sets, an experiment's own keys included (e.g. {"method",
    "method.score_scaling", "dataset.image_size"}); None outside a Hydra app (a config composed in Python)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    keys = set()
    for override in HydraConfig.get().overrides.task:
        key, _, value = override.partition("=")
        key = key.lstrip("+~")
        keys |= _experiment_keys(value) if key == "experiment" else {key}
    return keys


def _asked(explicit: set[str], key: str) -> bool:
    return any(k == key or k.startswith(key + ".") for k in explicit)


# ---------------------------------------------------------------- identity
def _backbone_identity(backbone: dict[str, Any] | None) -> dict[str, Any]:
    """The keys that define the backbone network; timm_name without its pretrained tag (`.aa_in1k`)."""
    out = {k: v for k, v in (backbone or {}).items() if k not in _BACKBONE_SOURCE_KEYS}
    if isinstance(out.get("timm_name"), str):
        out["timm_name"] = out["timm_name"].split(".")[0]
    return out


def _method_class(method_config: dict[str, Any]) -> type | None:
    try:
        return hydra.utils.get_class(method_config["_target_"])
    except Exception:
        return None


def identity_differences(cfg: DictConfig, meta: dict[str, Any], explicit: set[str]) -> list[str]:
    """`key: the checkpoint's X, this run's Y` for every network-defining key the run sets to another value."""
    diffs = []
    wanted = method_name(cfg)
    if wanted != meta["method"] and _asked(explicit, "method"):
        diffs.append(f"method: written by method={meta['method']}, this run asks for method={wanted}")
    size = cfg.dataset.image_size
    size = list(size) if OmegaConf.is_list(size) else [size, size]
    if size != list(meta["image_size"]) and _asked(explicit, "dataset.image_size"):
        diffs.append(f"dataset.image_size: the checkpoint was trained at {meta['image_size']}, "
                     f"this run asks for {size}")  # fmt: skip
    if meta.get("backbone") and cfg.get("backbone") is not None and _asked(explicit, "backbone"):
        ours = _backbone_identity(cast(dict[str, Any], OmegaConf.to_container(cfg.backbone, resolve=True)))
        theirs = _backbone_identity(meta["backbone"])
        diffs += [f"backbone.{k}: the checkpoint's {theirs.get(k)}, this run's {ours.get(k)}"
                  for k in sorted(set(ours) | set(theirs)) if ours.get(k) != theirs.get(k)]  # fmt: skip
    if wanted == meta["method"]:
        method_cfg = cast(dict[str, Any], OmegaConf.to_container(cfg.method, resolve=True))
        for k in getattr(_method_class(meta["method_config"]), "architecture_keys", ()):
            asked = _asked(explicit, f"method.{k}")
            if asked and k in meta["method_config"] and method_cfg.get(k) != meta["method_config"][k]:
                diffs.append(f"method.{k}: the checkpoint's {meta['method_config'][k]}, this run's {method_cfg.get(k)}")
    return diffs


def adopt_checkpoint_model(cfg: DictConfig, state: dict[str, Any]) -> DictConfig:
    """test/predict with a checkpoint: the model (method, backbone, input size) comes from the checkpoint.

    A network-defining key the command line (or an experiment preset) sets to another value is an error naming each
    such key; inference options it sets (OneNIP's prompt_selection, score_scaling, ...) are kept. The backbone's
    weights are the checkpoint's. An official OneNIP/UniAD file records no model: only its backbone source is set.
    Checkpoints written before they recorded their model are used as the config says.
    """
    from anomaly_zoo.checkpoints.official import has_backbone, official_kind

    cfg = cfg.copy()
    meta = state.get(METADATA_KEY)
    if not meta:
        if official_kind(state["state_dict"]) and has_backbone(state["state_dict"]) and cfg.get("backbone"):
            with open_dict(cfg):
                cfg.backbone = from_checkpoint(cast(dict[str, Any], OmegaConf.to_container(cfg.backbone, resolve=True)))
        return cfg
    explicit = explicit_keys()
    if diffs := identity_differences(cfg, meta, explicit or set()):
        raise CheckpointMismatchError(
            f"ckpt_path={cfg.ckpt_path} does not fit this run: " + "; ".join(diffs)
            + " (leave these keys out to take them from the checkpoint)"
        )  # fmt: skip
    method_cfg = dict(meta["method_config"])
    if method_name(cfg) == meta["method"]:  # the run's inference options over the checkpoint's
        ours = cast(dict[str, Any], OmegaConf.to_container(cfg.method, resolve=True))
        fixed = getattr(_method_class(method_cfg), "architecture_keys", ())
        for k, v in ours.items():
            # a config composed in Python cannot tell its defaults from choices: it keeps its own options
            if k not in fixed and k != "backbone" and (explicit is None or _asked(explicit, f"method.{k}")):
                method_cfg[k] = v
    with open_dict(cfg):
        if meta.get("backbone"):
            cfg.backbone = from_checkpoint(meta["backbone"])
            if isinstance(method_cfg.get("backbone"), dict):
                method_cfg["backbone"] = "${backbone}"  # not the copy recorded with its original weight source
        cfg.method = method_cfg
        h, w = meta["image_size"]
        cfg.dataset.image_size = h if h == w else [h, w]
    return cfg


def adopt_if_readable(cfg: DictConfig) -> DictConfig:
    """`adopt_checkpoint_model` when `ckpt_path` names a file (a missing one is reported by the config check)."""
    ckpt = cfg.get("ckpt_path")
    if not ckpt or ckpt == "last" or not Path(str(ckpt)).expanduser().is_file():
        return cfg
    return adopt_checkpoint_model(cfg, read_checkpoint(ckpt))


def check_model_matches(name: str, state: dict[str, Any], ckpt_path: str | Path) -> None:
    meta = state.get(METADATA_KEY) or {}
    if meta.get("method") and meta["method"] != name:
        raise CheckpointMismatchError(
            f"ckpt_path={ckpt_path} was written by method={meta['method']}, not {name}: pass method={meta['method']} "
            "(or leave method out: test and predict take it from the checkpoint)"
        )


# ---------------------------------------------------------------- weights
def load_checkpoint_weights(method: AnomalyMethod, ckpt_path: str | Path, name: str | None = None) -> dict[str, Any]:
    """Load a checkpoint's weights (and the method's own extra state) for evaluation; returns the checkpoint, as this
    framework's (an official OneNIP/UniAD file converted).

    Weights that do not fit the method are a `CheckpointMismatchError` naming the method that wrote them (where the
    checkpoint records it) instead of the state dict's key lists."""
    from anomaly_zoo.checkpoints.official import official_kind, to_framework_checkpoint

    state = read_checkpoint(ckpt_path)
    kind = official_kind(state["state_dict"])
    if kind is not None:
        from anomaly_zoo.methods.onenip import OneNIP

        if not isinstance(method, OneNIP):
            raise CheckpointMismatchError(f"ckpt_path={ckpt_path} is an official {kind.upper()} checkpoint: "
                                          f"pass method={kind}")  # fmt: skip
        state = to_framework_checkpoint(state, method)
    elif name is not None:  # the config's method name (what checkpoints record), when the caller has a config
        check_model_matches(name, state, ckpt_path)
    name = name or type(method).__name__
    try:
        method.on_load_checkpoint(state)
        method.load_state_dict(state["state_dict"])  # strict: every weight, the backbone's too, from the file
    except CheckpointFormatError:
        raise  # the method already says what does not fit
    except (RuntimeError, KeyError, ValueError) as err:
        writer = (state.get(METADATA_KEY) or {}).get("method", "an unrecorded method (an older checkpoint)")
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointMismatchError(
            f"ckpt_path={ckpt_path}: its weights do not fit method={name} as configured (written by {writer}): "
            f"{first[:300]}"
        ) from err
    return state


def save_atomically(checkpoint: dict[str, Any], out: Path) -> None:
    """`out.partial`, fsync, rename: a killed writer leaves no half-written checkpoint under `out`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    with partial.open("wb") as f:
        torch.save(checkpoint, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, out)
