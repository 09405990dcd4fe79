"""DINO / DINOv2 ViT patch tokens exactly as their own `get_intermediate_layers` give them, on timm's ViT.

timm's `features_only` ViT drops the final LayerNorm and resamples the position embeddings once at load (its own
resampling) when built for another image size. DINO (github.com/facebookresearch/dino, `vision_transformer.py`)
applies the final norm to the returned tokens and interpolates the 224-px position grid at run time (bicubic with
scale factor (n + 0.1) / n0). DINOv2 (github.com/facebookresearch/dinov2, `models/vision_transformer.py`) does the
same from its 518-px grid; its register models (`dinov2_vit*14_reg`, hub/backbones.py) interpolate to the output
size with antialiasing and no 0.1 offset, and put 4 register tokens after the class token, which carry no position
embedding. `DinoViT` keeps the checkpoint's grid and does what the model's own code does, so the features equal
theirs. Weights: timm's hub/safetensors files, DINO's own checkpoints (`dino_deitsmall8_pretrain.pth` from torch
hub, or a training `checkpoint.pth`, see `dino_to_timm_state_dict`) or DINOv2's (`dinov2_vitl14_reg4_pretrain.pth`,
converted by timm's own DINOv2 key map).
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


def _to_timm(state: dict, vit: nn.Module) -> dict[str, torch.Tensor]:
    """Any supported checkpoint → the keys of this timm ViT (DINOv2's own files by timm's DINOv2 key map)."""
    state = dino_to_timm_state_dict(state)
    if "mask_token" in state or "register_tokens" in state:  # DINOv2's own layout
        from timm.models.vision_transformer import checkpoint_filter_fn

        state = checkpoint_filter_fn(state, vit)  # type: ignore[arg-type]  # a timm VisionTransformer
    return state


class DinoViT(nn.Module):
    """Frozen DINO / DINOv2 ViT returning `[tokens]`, tokens (N, C, H/p, W/p): last block, final norm, patch tokens
    only (no class or register tokens).

    `interpolate_offset` / `interpolate_antialias`: how the position grid is resized to the input, as the model's own
    code does it: DINO and DINOv2 without registers 0.1 / False (scale factor (n + 0.1) / n0), DINOv2 with registers
    0.0 / True (the output size, antialiased).
    """

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
        interpolate_offset: float = 0.1,
        interpolate_antialias: bool = False,
    ) -> None:
        super().__init__()
        self.interpolate_offset, self.interpolate_antialias = float(interpolate_offset), bool(interpolate_antialias)
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
                    "Point it at the model's own checkpoint (DINO: dino_deitsmall8_pretrain.pth, DINOv2: "
                    "dinov2_vitl14_reg4_pretrain.pth, from torch hub) or timm's safetensors of it"
                )
            self.vit = _create_timm_model(timm_name, "random", None, num_classes=0)
            try:
                self.vit.load_state_dict(_to_timm(_read_weights(path), self.vit), strict=True)
            except Exception as err:
                raise BackboneWeightsError(
                    f"feature_extractor.weights_path={path}: not a {timm_name} checkpoint in DINO's or timm's format "
                    f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
                ) from err
        else:
            self.vit = _create_timm_model(timm_name, weights, weights_path, num_classes=0)
        registers = getattr(self.vit, "reg_token", None)
        self.num_registers = 0 if registers is None else int(registers.shape[1])
        if getattr(self.vit, "cls_token", None) is None or getattr(self.vit, "pos_embed", None) is None:
            raise ValueError(f"feature_extractor '{timm_name}': DinoViT needs a ViT with a class token")
        #: DINOv2 register models in timm: the grid holds the patches' positions only (the class token's position
        #: is folded into the class token at conversion, exactly, as DINOv2 never resizes it)
        self.class_position = not getattr(self.vit, "no_embed_class", False)
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
        """DINO's / DINOv2's interpolate_pos_encoding: the checkpoint grid n0 × n0 → (H/p) × (W/p), bicubic, scale
        factor (H/p + offset) / n0 (DINO's 0.1 guards the output size against float error, DINO issue #8), or the
        output size itself with offset 0. Returns the class token's row first where the grid has one."""
        pos = self.vit.pos_embed
        first = 1 if self.class_position else 0
        n0 = int(math.sqrt(pos.shape[1] - first))
        gh, gw = height // self.patch_size, width // self.patch_size
        if gh * gw == n0 * n0 and height == width:
            return pos
        grid = pos[:, first:].float().reshape(1, n0, n0, -1).permute(0, 3, 1, 2)
        if self.interpolate_offset:
            offset = self.interpolate_offset
            size: dict = {"scale_factor": ((gh + offset) / n0, (gw + offset) / n0)}
        else:
            size = {"size": (gh, gw)}
        grid = F.interpolate(grid, mode="bicubic", antialias=self.interpolate_antialias, **size).to(pos.dtype)
        if tuple(grid.shape[-2:]) != (gh, gw):
            raise RuntimeError(f"position grid {tuple(grid.shape[-2:])} != patch grid {(gh, gw)}")
        return torch.cat([pos[:, :first], grid.permute(0, 2, 3, 1).reshape(1, gh * gw, -1)], dim=1)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        vit = self.vit
        x = vit.patch_embed.proj((images - self.mean) / self.std)
        n, _, gh, gw = x.shape
        x = vit.patch_embed.norm(x.flatten(2).transpose(1, 2))
        pos = self.position_embedding(images.shape[-2], images.shape[-1])
        cls = vit.cls_token.expand(n, -1, -1)
        if self.class_position:  # DINO: class token and patches, then their positions
            x = torch.cat([cls, x], dim=1) + pos
        else:  # DINOv2 with registers: [class, registers, patches + positions]
            x = torch.cat([cls, vit.reg_token.expand(n, -1, -1), x + pos], dim=1)
        x = vit.norm(vit.blocks(vit.norm_pre(vit.pos_drop(x))))
        return [x[:, 1 + self.num_registers :].transpose(1, 2).reshape(n, -1, gh, gw)]
