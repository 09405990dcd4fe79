"""Official OneNIP / UniAD checkpoints (github.com/gaobb/OneNIP) → this framework's OneNIP checkpoint.

`tools/train_val.py` saves `{"state_dict": model.state_dict(), ...}` of a DDP-wrapped `ModelHelper`: keys
`module.backbone.*` (lukemelas EfficientNet-b4, frozen) and `module.reconstruction.*` (the transformer, and for
OneNIP the refiner `seghead`). The layouts agree tensor for tensor (the position embedding is [column | row] on both
sides, attention in_proj/out_proj are the same nn.MultiheadAttention parameters), so conversion is renaming only.
Checked numerically against the official modules on random weights in tests/methods/onenip/test_official_onenip.py.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import torch

from anomaly_zoo.backbones.lukemelas import is_lukemelas_state, lukemelas_to_timm, unused_lukemelas_keys
from anomaly_zoo.methods.base import CheckpointFormatError
from anomaly_zoo.methods.onenip.lightning_model import POSITION_LAYOUT

if TYPE_CHECKING:
    from anomaly_zoo.methods.onenip.lightning_model import OneNIP

#: (official key under `reconstruction.`, regex) → framework key template. First match wins.
_RENAMES: list[tuple[str, str]] = [
    (r"input_proj\.(.+)", r"transformer.input_proj.\1"),
    (r"output_proj\.(.+)", r"transformer.output_proj.\1"),
    (r"pos_embed\.row_embed\.(.+)", r"transformer.pos.row.\1"),
    (r"pos_embed\.col_embed\.(.+)", r"transformer.pos.col.\1"),
    (r"transformer\.encoder\.layers\.(\d+)\.self_attn\.(.+)", r"transformer.encoder.\1.attn.\2"),
    (r"transformer\.encoder\.layers\.(\d+)\.linear1\.(.+)", r"transformer.encoder.\1.mlp.0.\2"),
    (r"transformer\.encoder\.layers\.(\d+)\.linear2\.(.+)", r"transformer.encoder.\1.mlp.3.\2"),
    (r"transformer\.encoder\.layers\.(\d+)\.(norm[12])\.(.+)", r"transformer.encoder.\1.\2.\3"),
    # OneNIP's two-way decoder
    (
        r"transformer\.decoder\.layers\.(\d+)\.cross_attn_prompt_to_image\.(.+)",
        r"transformer.decoder.\1.prompt_to_image.\2",
    ),
    (
        r"transformer\.decoder\.layers\.(\d+)\.cross_attn_image_to_prompt\.(.+)",
        r"transformer.decoder.\1.image_to_prompt.\2",
    ),
    (r"transformer\.decoder\.layers\.(\d+)\.mlp\.lin1\.(.+)", r"transformer.decoder.\1.mlp.0.\2"),
    (r"transformer\.decoder\.layers\.(\d+)\.mlp\.lin2\.(.+)", r"transformer.decoder.\1.mlp.2.\2"),
    (r"transformer\.decoder\.final_attn_token_to_image\.(.+)", r"transformer.final_attn.\1"),
    # UniAD's query decoder
    (r"transformer\.decoder\.layers\.(\d+)\.learned_embed\.(.+)", r"transformer.decoder.\1.queries.\2"),
    (r"transformer\.decoder\.layers\.(\d+)\.self_attn\.(.+)", r"transformer.decoder.\1.to_memory.\2"),
    (r"transformer\.decoder\.layers\.(\d+)\.multihead_attn\.(.+)", r"transformer.decoder.\1.to_previous.\2"),
    (r"transformer\.decoder\.layers\.(\d+)\.linear1\.(.+)", r"transformer.decoder.\1.mlp.0.\2"),
    (r"transformer\.decoder\.layers\.(\d+)\.linear2\.(.+)", r"transformer.decoder.\1.mlp.3.\2"),
    (r"transformer\.decoder\.layers\.(\d+)\.(norm[123])\.(.+)", r"transformer.decoder.\1.\2.\3"),
    (r"transformer\.decoder\.norm\.(.+)", r"transformer.final_norm.\1"),
    # the refiner: upconv{k} = conv, BN, ReLU, transposed conv → body[4(k-1) + j]; predictor → body[8]
    (r"seghead\.upconv1\.(\d)\.(.+)", "refiner.body.{0+\\1}.\\2"),
    (r"seghead\.upconv2\.(\d)\.(.+)", "refiner.body.{4+\\1}.\\2"),
    (r"seghead\.predictor\.(.+)", r"refiner.body.8.\1"),
]
_COMPILED = [(re.compile(pattern + "$"), template) for pattern, template in _RENAMES]


class OfficialCheckpointError(CheckpointFormatError):
    """An official checkpoint that does not fit the configured model (kind, size, depth)."""


def has_backbone(state_dict: dict[str, Any]) -> bool:
    """Whether an official file holds its frozen backbone (every released one does): then it is the weight source."""
    return any(k.removeprefix("module.").startswith("backbone.") for k in state_dict)


def official_kind(state_dict: dict[str, Any]) -> str | None:
    """'onenip' or 'uniad' for a state dict written by the official code, else None."""
    keys = [k.removeprefix("module.") for k in state_dict]
    if not any(k.startswith("reconstruction.") for k in keys):
        return None
    if any(k.startswith("reconstruction.seghead.") or "cross_attn_prompt_to_image" in k for k in keys):
        return "onenip"
    return "uniad"


def _framework_key(official: str) -> str | None:
    for pattern, template in _COMPILED:
        if m := pattern.match(official):
            key = m.expand(template)
            # evaluate the refiner's "{a+b}" index arithmetic
            return re.sub(r"\{(\d+)\+(\d+)\}", lambda g: str(int(g[1]) + int(g[2])), key)
    return None


def to_framework_checkpoint(checkpoint: dict[str, Any], model: OneNIP) -> dict[str, Any]:
    """An official checkpoint as this framework's, for `model` (renamed weights; an empty prompt pool and unit scale
    for `complete_from_training_data` to fill; `official_import` records the kind and the unused official keys)."""
    kind = {"dynamic": "onenip", "query": "uniad"}.get(model.hparams.decoder)
    if kind is None:
        raise OfficialCheckpointError(f"official checkpoints are OneNIP (decoder=dynamic) or UniAD (decoder=query) "
                                      f"models, not method.decoder={model.hparams.decoder}")  # fmt: skip
    state, unused = convert_official_state(checkpoint["state_dict"], model, kind)
    state.update(
        pool_features=model.pool_features.new_empty(0, *model.pool_features.shape[1:]),
        pool_category=model.pool_category.new_empty(0),
        rec_scale=torch.tensor(1.0),
        feature_statistics_fitted=torch.tensor(False),
    )
    return {"state_dict": state, "position_layout": POSITION_LAYOUT, "pool_categories": [],
            "official_import": {"kind": kind, "unused_keys": unused}}  # fmt: skip


def convert_official_state(
    state_dict: dict[str, torch.Tensor], model: OneNIP, expected_kind: str
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Official state dict → `model`'s (a framework OneNIP) keys. Returns (state, official keys not used).

    Every official key is either placed or returned as unused (only the backbone's classification head is,
    for a features_only backbone). Raises OfficialCheckpointError naming what differs when the checkpoint is of
    another kind, input size or depth than `model`.
    """
    kind = official_kind(state_dict)
    if kind is None:
        raise OfficialCheckpointError("not an official OneNIP/UniAD checkpoint (no 'module.reconstruction.*' keys)")
    if kind != expected_kind:
        raise OfficialCheckpointError(
            f"this is an official {kind.upper()} checkpoint but method={expected_kind} is configured: use method={kind}"
        )
    state = {k.removeprefix("module."): v for k, v in state_dict.items()}
    own = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    unused: list[str] = []
    for key, value in state.items():
        if not key.startswith("reconstruction."):
            continue
        new = _framework_key(key.removeprefix("reconstruction."))
        if new is None or new not in own:
            unused.append(key)
            continue
        if own[new].shape != value.shape:
            raise OfficialCheckpointError(_shape_message(key, value, own[new]))
        out[new] = value
    backbone = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    if backbone:
        timm_model = model.neck.backbone.model
        if not is_lukemelas_state(backbone):
            raise OfficialCheckpointError("the checkpoint's backbone is not a lukemelas EfficientNet")
        try:
            mapped = lukemelas_to_timm(backbone, timm_model)
        except ValueError as err:
            raise OfficialCheckpointError(f"the checkpoint's backbone does not fit backbone=...: {err}") from err
        out.update({f"neck.backbone.model.{k}": v for k, v in mapped.items()})
        unused += [f"backbone.{k}" for k in unused_lukemelas_keys(backbone, timm_model)]
    unused += [k for k in state if not k.startswith(("reconstruction.", "backbone."))]
    missing = [k for k in own if k not in out and not _fitted_by_framework(k)]
    if missing:
        raise OfficialCheckpointError(
            f"the official {kind} checkpoint leaves {len(missing)} weights of the configured model without a value "
            f"(e.g. {missing[:4]}): it has fewer layers or parts (method.encoder_layers/decoder_layers, refiner?)"
        )
    return out, sorted(unused)


#: Parts of a framework checkpoint the official file does not have; built from training images instead.
_FRAMEWORK_ONLY = ("pool_features", "pool_category", "rec_scale", "feature_statistics_fitted")


def _fitted_by_framework(key: str) -> bool:
    return key in _FRAMEWORK_ONLY or key in ("transformer.feature_mean", "transformer.feature_std")


def _shape_message(key: str, value: torch.Tensor, own: torch.Tensor) -> str:
    if "pos_embed" in key:
        return (
            f"the official checkpoint was trained on a {value.shape[0]}-token axis ({value.shape[0] * 16} px) but "
            f"the model is built for {own.shape[0]} ({own.shape[0] * 16} px): set dataset.image_size="
            f"{value.shape[0] * 16}"
        )
    return (
        f"official {key} has shape {tuple(value.shape)}, the configured model {tuple(own.shape)}: "
        "check method.hidden / method.ffn"
    )
