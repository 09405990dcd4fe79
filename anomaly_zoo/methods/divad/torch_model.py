"""DIVAD's whole inference network as one pure nn.Module (Lightning glue in lightning_model.py).

The steps of the paper (Sec. 3) in the official code's order: reconstruct the image by DDIM inversion and guided
denoising (pipeline.DiffusionReconstructor), compare input and reconstruction by the cosine dissimilarity of DINO
patch features, mask with the object mask, blur, and score by repeated average pooling then the max
(anomaly_map.py holds each step).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from anomaly_zoo.methods.divad.anomaly_map import (
    feature_dissimilarity,
    finish_map,
    reconstructions_for_features,
    repeated_average_max,
)
from anomaly_zoo.methods.divad.pipeline import DiffusionReconstructor

#: features of the input (N, C, h, w) → object masks (N, map_size, map_size), or None for no mask.
MaskFunction = Callable[[torch.Tensor], torch.Tensor | None]


class DIVADModel(nn.Module):
    """`forward(images, prompts) -> (maps (N, S, S), scores (N,))` at S = `map_size`.

    Shares (does not copy) a `method=divad` module's reconstructor and feature extractor; `DIVAD.torch_model()`
    builds it. `predict` also takes the inputs each network reads (the framework renders them from the file:
    `sd_images` at the diffusion model's resolution, `feature_images` at the map size) and the object masks.
    """

    def __init__(
        self,
        reconstructor: DiffusionReconstructor,
        extractor: nn.Module,
        map_size: int = 256,
        blur_sigma: float = 5.0,
        blur_border: str = "symmetric",
        score_kernel: int = 8,
        score_repeats: int = 8,
    ) -> None:
        super().__init__()
        self.reconstructor, self.extractor = reconstructor, extractor
        self.map_size, self.blur_sigma, self.blur_border = map_size, blur_sigma, blur_border
        self.score_kernel, self.score_repeats = score_kernel, score_repeats

    @torch.no_grad()
    def predict(
        self,
        sd_images: torch.Tensor,
        feature_images: torch.Tensor,
        prompts: Sequence[str],
        masks: MaskFunction | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        recons = reconstructions_for_features(self.reconstructor(sd_images, list(prompts)), self.map_size)
        maps, features = feature_dissimilarity(self.extractor, feature_images, recons, self.map_size)
        object_masks = masks(features) if masks is not None else None
        maps = finish_map(maps, object_masks, self.blur_sigma, self.blur_border)
        return maps, repeated_average_max(maps, self.score_kernel, self.score_repeats)

    def forward(self, images: torch.Tensor, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """From one tensor of images (both networks' inputs resized from it), no object mask."""
        return self.predict(images, images, prompts)
