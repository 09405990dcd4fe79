"""DINO ViT patch tokens exactly as DINO's own `get_intermediate_layers` gives them, on timm's ViT.

timm's `features_only` ViT drops the final LayerNorm and resamples the position embeddings once at load (its own
resampling) when built for another image size. DINO (github.com/facebookresearch/dino, `vision_transformer.py`)
applies the final norm to the returned tokens and interpolates the 224-px position grid at run time (bicubic with
scale factor (n + 0.1) / n0). `DinoViT` keeps the checkpoint's grid and does the latter, so the features equal
DINO's. Weights: timm's hub/safetensors files or DINO's own checkpoints (`dino_deitsmall8_pretrain.pth` from
torch hub, or a training `checkpoint.pth`), see `dino_to_timm_state_dict`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from anomaly_zoo.backbones.feature_extractor import NORMALIZATIONS, BackboneWeightsError, _create_timm_model

#: Prefixes DINO's training checkpoints put before the ViT's own keys (DDP wrapper, MultiCropWrapper).
_DINO_PREFIXES = ("module.", "backbone.")


def dino_to_timm_state_dict(checkpoint: dict) -> dict[str, torch.Tensor]:
    """A DINO checkpoint in any of its published forms → timm ViT keys.

    DINO's hub files (`dino_deitsmall8_pretrain.pth`) are the ViT's state dict, whose key names timm's
    VisionTransformer shares (cls_token, pos_embed, patch_embed.proj, blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,
    mlp.fc1,mlp.fc2}, norm). Training checkpoints wrap it: {"teacher": {"backbone.<key>", "head.<projection head>"}}
    (the student adds "module."). timm's own files pass through unchanged.
    """
    for wrapper in ("teacher", "state_dict", "model"):
        if wrapper in checkpoint and isinstance(checkpoint[wrapper], dict):
            checkpoint = checkpoint[wrapper]
            break
    out = {}
    for key, value in checkpoint.items():
        for prefix in _DINO_PREFIXES:
            key = key.removeprefix(prefix)
        if key.startswith("head."):  # DINO's self-distillation projection head, not part of the ViT
            continue
        out[key] = value
    return out


def _read_weights(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


class DinoViT(nn.Module):
    """Frozen DINO ViT returning `[tokens]`, tokens (N, C, H/p, W/p): last block, final norm, no CLS token."""

    #: A timm ViT with one class token (checked in __init__); `forward` calls its submodules by name.
    vit: Any
    # Buffers (register_buffer in __init__), declared for the type checker.
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        name: str = "dino_vits8",
        timm_name: str = "vit_small_patch8_224.dino",
        weights: str = "hub",
        weights_path: str | None = None,
        normalization: str = "imagenet",
    ) -> None:
        super().__init__()
        if normalization not in NORMALIZATIONS:
            raise ValueError(
                f"feature_extractor.normalization={normalization!r} is not one of {sorted(NORMALIZATIONS)}"
            )
        self.name = name
        if weights == "file":
            path = Path(weights_path or "").expanduser()
            if not weights_path or not path.is_file():
                raise BackboneWeightsError(
                    f"feature_extractor '{timm_name}': weights=file but weights_path={weights_path!r} is not a file. "
                    "Point it at DINO's dino_deitsmall8_pretrain.pth (torch hub) or timm's "
                    "vit_small_patch8_224.dino safetensors"
                )
            self.vit = _create_timm_model(timm_name, "random", None, num_classes=0)
            try:
                state = dino_to_timm_state_dict(_read_weights(path))
                self.vit.load_state_dict(state, strict=True)
            except Exception as err:
                raise BackboneWeightsError(
                    f"feature_extractor.weights_path={path}: not a {timm_name} checkpoint in DINO's or timm's format "
                    f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
                ) from err
        else:
            self.vit = _create_timm_model(timm_name, weights, weights_path, num_classes=0)
        if getattr(self.vit, "num_prefix_tokens", 1) != 1 or not hasattr(self.vit, "pos_embed"):
            raise ValueError(f"feature_extractor '{timm_name}': DinoViT needs a ViT with one class token")
        self.vit.eval().requires_grad_(False)
        mean, std = NORMALIZATIONS[normalization]
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @property
    def patch_size(self) -> int:
        return int(self.vit.patch_embed.patch_size[0])

    def train(self, mode: bool = True) -> DinoViT:
        super().train(mode)
        self.vit.eval()
        return self

    def position_embedding(self, height: int, width: int) -> torch.Tensor:
        """DINO's interpolate_pos_encoding: the checkpoint grid n0 × n0 → (H/p) × (W/p), bicubic, scale factor
        (H/p + 0.1) / n0 (the 0.1 guards the output size against float error, DINO issue #8)."""
        pos = self.vit.pos_embed
        n0 = int(math.sqrt(pos.shape[1] - 1))
        gh, gw = height // self.patch_size, width // self.patch_size
        if gh * gw == n0 * n0 and height == width:
            return pos
        grid = pos[:, 1:].reshape(1, n0, n0, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, scale_factor=((gh + 0.1) / n0, (gw + 0.1) / n0), mode="bicubic")
        if tuple(grid.shape[-2:]) != (gh, gw):
            raise RuntimeError(f"position grid {tuple(grid.shape[-2:])} != patch grid {(gh, gw)}")
        return torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, gh * gw, -1)], dim=1)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        vit = self.vit
        x = vit.patch_embed.proj((images - self.mean) / self.std)
        n, _, gh, gw = x.shape
        x = vit.patch_embed.norm(x.flatten(2).transpose(1, 2))
        x = torch.cat([vit.cls_token.expand(n, -1, -1), x], dim=1)
        x = vit.pos_drop(x + self.position_embedding(images.shape[-2], images.shape[-1]))
        x = vit.norm(vit.blocks(vit.norm_pre(x)))
        return [x[:, 1:].transpose(1, 2).reshape(n, -1, gh, gw)]
