"""PatchKNN: nearest-normal-patch distance on frozen backbone features (a PatchCore-style baseline).

Pure nn.Module: embedding, memory-bank construction and scoring. Lightning glue is in lightning_model.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from anomaly_zoo.backbones import FeatureExtractor
from anomaly_zoo.methods.components import gaussian_blur, upsample_maps


class PatchKNNModel(nn.Module):
    """Locally aggregated multi-stage patch features; anomaly = distance to the nearest bank patch."""

    def __init__(self, backbone: FeatureExtractor, neighbourhood: int = 3, blur_sigma: float = 4.0) -> None:
        super().__init__()
        self.backbone = backbone
        self.neighbourhood = neighbourhood
        self.blur_sigma = blur_sigma
        self.register_buffer("memory_bank", torch.empty(0, sum(backbone.channels)))

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) patch embeddings at the finest selected stage's resolution."""
        feats = self.backbone(images)
        size = feats[0].shape[-2:]
        pad = self.neighbourhood // 2
        pooled = [F.avg_pool2d(f, self.neighbourhood, stride=1, padding=pad, count_include_pad=False) for f in feats]
        return torch.cat([F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in pooled], dim=1)

    def set_memory_bank(self, embeddings: torch.Tensor) -> None:
        self.memory_bank = embeddings.detach().contiguous()

    def nearest_distance(self, embeddings: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
        """(N, C, h, w) → (N, h, w) Euclidean distance to the nearest memory-bank patch."""
        if self.memory_bank.numel() == 0:
            raise RuntimeError("PatchKNN has an empty memory bank: fit the method (or load a checkpoint) first")
        n, c, h, w = embeddings.shape
        flat = embeddings.permute(0, 2, 3, 1).reshape(-1, c)
        out = torch.cat([torch.cdist(part, self.memory_bank).amin(dim=1) for part in flat.split(chunk)])
        return out.view(n, h, w)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(maps (N, H, W): nearest-patch distance upsampled to the image and blurred, scores (N,): their max)."""
        dist = self.nearest_distance(self.embed(images))
        maps = gaussian_blur(upsample_maps(dist, (images.shape[-2], images.shape[-1])), self.blur_sigma)
        return maps, maps.flatten(1).amax(dim=1)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The bank's size is only known after fitting: take it from the checkpoint.
        key = prefix + "memory_bank"
        if key in state_dict:
            self.memory_bank = torch.empty_like(state_dict[key], device=self.memory_bank.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
