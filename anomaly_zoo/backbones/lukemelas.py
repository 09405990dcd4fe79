"""lukemelas EfficientNet-PyTorch state dicts → timm EfficientNet keys, for any EfficientNet / EfficientNet-Lite.

lukemelas numbers blocks flat (`_blocks.{i}`); timm nests them per stage (`blocks.{stage}.{j}`) and names the
layers after their role. Blocks without an expansion conv (the first stage) are timm's DepthwiseSeparableConv, the
others its InvertedResidual. The flat → (stage, j) order is read off the timm model itself, so one map serves b0-b7
and the Lite variants. Used for the packaged Lite0 weights, lukemelas `.pth` files and the frozen backbone inside
official OneNIP/UniAD checkpoints.
"""

from __future__ import annotations

import re

import torch
from torch import nn

_EXPANDED = {  # InvertedResidual
    "_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
    "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand", "_project_conv": "conv_pwl", "_bn2": "bn3",
}  # fmt: skip
_NOT_EXPANDED = {  # DepthwiseSeparableConv
    "_depthwise_conv": "conv_dw", "_bn1": "bn1", "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand",
    "_project_conv": "conv_pw", "_bn2": "bn2",
}  # fmt: skip
_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_BLOCK = re.compile(r"_blocks\.(\d+)\.(_\w+?)\.(.+)$")


def is_lukemelas_state(state: dict[str, torch.Tensor]) -> bool:
    return any(k.startswith("_conv_stem.") for k in state)


def lukemelas_to_timm(state: dict[str, torch.Tensor], timm_model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename a lukemelas state dict to `timm_model`'s keys (full model or features_only).

    Returns the tensors `timm_model` has keys for; raises ValueError naming the first key that does not fit (another
    architecture) and any key of `timm_model` left without a value. Keys of layers the timm model lacks (a
    features_only model has no head) are dropped: `unused_lukemelas_keys` lists them.
    """
    names = _renamed(state, timm_model)
    target = timm_model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new = names[key]
        if new is None or new not in target:
            continue  # unused_lukemelas_keys reports these
        if target[new].shape != value.shape:
            raise ValueError(
                f"lukemelas key {key} ({tuple(value.shape)}) does not fit timm's {new} ({tuple(target[new].shape)}): "
                "the weights are of another EfficientNet variant"
            )
        out[new] = value
    missing = [k for k in target if k not in out]
    if missing:
        raise ValueError(
            f"the lukemelas state dict leaves {len(missing)} of the timm model's keys without a value "
            f"(e.g. {missing[:3]}): the weights are of another EfficientNet variant"
        )
    return out


def unused_lukemelas_keys(state: dict[str, torch.Tensor], timm_model: nn.Module) -> list[str]:
    """The lukemelas keys `lukemelas_to_timm` does not use for `timm_model` (e.g. the head of a features_only model)."""
    target = timm_model.state_dict()
    return [k for k, new in _renamed(state, timm_model).items() if new not in target]


def _renamed(state: dict[str, torch.Tensor], timm_model: nn.Module) -> dict[str, str | None]:
    """{lukemelas key: timm key, or None where the layer has no timm name}."""
    blocks = getattr(timm_model, "blocks", None)
    if blocks is None:
        raise ValueError(f"{type(timm_model).__name__} is not a timm EfficientNet (no .blocks)")
    positions = [(s, j) for s, stage in enumerate(blocks) for j in range(len(stage))]
    expanded = {int(m[1]) for k in state if (m := _BLOCK.match(k)) and m[2] == "_expand_conv"}
    return {k: _timm_key(k, positions, expanded) for k in state}


def _timm_key(key: str, positions: list[tuple[int, int]], expanded: set[int]) -> str | None:
    if block := _BLOCK.match(key):
        flat, layer, rest = int(block[1]), block[2], block[3]
        if flat >= len(positions):
            return None
        table = _EXPANDED if flat in expanded else _NOT_EXPANDED
        if layer not in table:
            return None
        stage, j = positions[flat]
        return f"blocks.{stage}.{j}.{table[layer]}.{rest}"
    layer, _, rest = key.partition(".")
    return f"{_TOP_LEVEL[layer]}.{rest}" if layer in _TOP_LEVEL else None
