"""Give an anomalib model the framework's backbone: its timm architecture, stages and (offline) weights.

anomalib models build their backbone themselves from a timm name and download pretrained weights from the hub. While
the adapter builds one, those downloads are intercepted (the network is built without weights and the request noted)
and the weights the framework's `backbone` config loads (packaged, hub or file) are copied in afterwards, so
`backbone=efficientnet_lite0` runs PatchCore or PaDiM on a fresh machine and a hub-only backbone fails with the
framework's clear error, never silently with random weights.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import timm
import torch
from anomalib.models.components.feature_extractors import TimmFeatureExtractor
from torch import nn

from anomaly_zoo.backbones import FeatureExtractor

BACKBONE_SOURCES = ("auto", "framework", "model")


class AnomalibModelError(RuntimeError):
    """An anomalib model cannot be built or run as configured."""


def accepts(cls: type[Any], argument: str) -> bool:
    return argument in inspect.signature(cls.__init__).parameters


def framework_backbone_arguments(cls: type, model_args: dict[str, Any], backbone: FeatureExtractor) -> dict[str, Any]:
    """Constructor arguments that make `cls` build the framework backbone's architecture without downloading."""
    if not accepts(cls, "backbone"):
        raise AnomalibModelError(
            f"anomalib's {cls.__name__} has no `backbone` argument: it brings its own network. "
            "Run it with method.backbone_source=model (its own pretrained weights, downloaded by anomalib)."
        )
    if "backbone" in model_args:
        raise AnomalibModelError(
            f"method.model.backbone={model_args['backbone']!r} conflicts with method.backbone_source=framework: "
            "choose the backbone with the `backbone=` config group (e.g. backbone=efficientnet_lite0), or set "
            "method.backbone_source=model to let anomalib load that timm name itself."
        )
    args: dict[str, Any] = {"backbone": backbone.timm_name}
    if accepts(cls, "layers") and "layers" not in model_args:
        args["layers"] = backbone.out_indices  # timm stage indices; anomalib accepts ints as layers
    if accepts(cls, "layer") and "layer" not in model_args:  # single-layer models (DFM)
        args["layer"] = backbone.out_indices[-1]
    return args


@contextmanager
def pretrained_requests(timm_name: str | None) -> Iterator[list[nn.Module]]:
    """While active, `timm.create_model(timm_name, pretrained=True)` builds the network without weights and is
    recorded in the yielded list; other names pass through. Networks a model builds without pretrained weights
    on purpose (e.g. STFPM's student) stay random, as the model intends. None: every name passes through."""
    original = timm.create_model
    requested: list[nn.Module] = []

    def create_model(model_name: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
        if model_name != timm_name:
            return original(model_name, pretrained=pretrained, **kwargs)
        network = original(model_name, pretrained=False, **kwargs)
        if pretrained:
            requested.append(network)
        return network

    # anomalib calls it as `timm.create_model`, its optional arguments by keyword (which the patch passes on).
    timm.create_model = create_model  # type: ignore[assignment]
    try:
        yield requested
    finally:
        timm.create_model = original


def load_framework_weights(model: nn.Module, backbone: FeatureExtractor, requested: list[nn.Module]) -> int:
    """Copy the framework backbone's weights into the timm extractors of `model` that asked for pretrained weights.

    Returns how many were filled; an error when the model has no extractor of that architecture at all.
    """
    timm_name = backbone.timm_name
    filled = found = 0
    for module in model.modules():
        if not isinstance(module, TimmFeatureExtractor) or module.backbone != timm_name:
            continue
        found += 1
        if not any(module.feature_extractor is net for net in requested):
            continue
        if getattr(module, "_uses_intermediates", False):
            raise AnomalibModelError(
                f"{timm_name} is a ViT in this anomalib model; the adapter copies weights into CNN extractors "
                "only. Use method.backbone_source=model."
            )
        source = backbone.with_stages(list(module.idx))
        module.feature_extractor.load_state_dict(source.model.state_dict(), strict=True)
        filled += 1
    if found == 0:
        raise AnomalibModelError(
            f"{type(model).__name__} builds no timm extractor for '{timm_name}' the adapter could fill, so it "
            "would run with random weights. Use method.backbone_source=model for this model."
        )
    return filled


def model_normalization(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean/std of the `Normalize` in the model's own pre-processor (identity if it has none).

    Only the normalisation is taken: resizing and cropping stay with `dataset.image_size`, so maps keep the
    ground truth's geometry (a centre crop would misalign them).
    """
    pre_processor = getattr(model, "pre_processor", None)
    transform = getattr(pre_processor, "transform", None)
    if transform is None:
        return torch.zeros(3), torch.ones(3)
    for step in getattr(transform, "transforms", [transform]):
        if type(step).__name__ == "Normalize":
            return torch.tensor(step.mean, dtype=torch.float32), torch.tensor(step.std, dtype=torch.float32)
    return torch.zeros(3), torch.ones(3)
