"""DIVAD's anomaly map: 1 − cosine similarity of patch features of input and reconstruction, masked, blurred."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from anomaly_zoo.data.views import ImageView, render_view
from anomaly_zoo.methods.components import gaussian_blur

#: How DIVAD reads an image for its feature extractor: PIL bilinear (antialiased) to the map size, as the official
#: test.py's torchvision Resize on PIL images; for the input image this is the dataset's `dino` input view.
FEATURE_INPUT = "bilinear"


def reconstructions_for_features(recons: torch.Tensor, size: int) -> torch.Tensor:
    """Float reconstructions in [0, 1] → what the official test.py feeds DINO: rounded to uint8 as diffusers'
    numpy_to_pil (the official script saves them as PNG, which is lossless), then PIL bilinear to `size`."""
    arr = (recons.detach().permute(0, 2, 3, 1).float().cpu().numpy() * 255).round().astype(np.uint8)
    view = ImageView(size, FEATURE_INPUT)
    return torch.stack([render_view(Image.fromarray(a), view) for a in arr]).to(recons.device)


def feature_dissimilarity(
    extractor: Callable[[torch.Tensor], list[torch.Tensor]], images: torch.Tensor, recons: torch.Tensor, size: int
):
    """(N, size, size) maps: per returned feature level, 1 − cosine of input and reconstruction features, bilinear
    (align_corners=True) to `size`, summed over the levels (test.py's `cal_anomaly_map(..., amap_mode='a')`: DINO
    ViTs return one level, the ResNet-50 extractors three). Inputs not already at `size` are resized here (torch
    bilinear). Also returns the input's last-level features (the object masks read them)."""

    def resize(x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) == (size, size):
            return x
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)

    levels_in, levels_rec = extractor(resize(images)), extractor(resize(recons))
    maps = None
    for f_in, f_rec in zip(levels_in, levels_rec, strict=True):
        dissimilarity = 1 - F.cosine_similarity(f_in, f_rec, dim=1)
        level = F.interpolate(dissimilarity[:, None], size=(size, size), mode="bilinear", align_corners=True)[:, 0]
        maps = level if maps is None else maps + level
    assert maps is not None, "the feature extractor returned no feature level"
    return maps, levels_in[-1]


def repeated_average_max(maps: torch.Tensor, kernel: int = 8, repeats: int = 8) -> torch.Tensor:
    """Image score as the official code: `repeats` average poolings (kernel, stride 1), then the max."""
    x = maps[:, None]
    for _ in range(repeats):
        if min(x.shape[-2:]) < kernel:
            break
        x = F.avg_pool2d(x, kernel, stride=1)
    return x.flatten(1).amax(dim=1)


def finish_map(maps: torch.Tensor, masks: torch.Tensor | None, sigma: float, border: str = "symmetric") -> torch.Tensor:
    """Object mask first, then the Gaussian blur (the official order; scipy's border handling by default)."""
    if masks is not None:
        maps = maps * masks
    return gaussian_blur(maps, sigma, border)
