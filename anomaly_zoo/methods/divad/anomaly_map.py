"""DIVAD's anomaly map: 1 − cosine similarity of patch features of input and reconstruction, masked, blurred."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from anomaly_zoo.backbones import FeatureExtractor
from anomaly_zoo.methods.base import gaussian_blur


def feature_dissimilarity(extractor: FeatureExtractor, images: torch.Tensor, recons: torch.Tensor, size: int):
    """(N, size, size) maps: last selected stage's features of both (each resized to `size`), 1 − cosine,
    bilinear (align_corners=True, as the official code) to `size`. Also returns the input's features."""
    resize = lambda x: F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)  # noqa: E731
    f_in = extractor(resize(images))[-1]
    f_rec = extractor(resize(recons))[-1]
    dissimilarity = 1 - F.cosine_similarity(f_in, f_rec, dim=1)
    maps = F.interpolate(dissimilarity[:, None], size=(size, size), mode="bilinear", align_corners=True)[:, 0]
    return maps, f_in


def repeated_average_max(maps: torch.Tensor, kernel: int = 8, repeats: int = 8) -> torch.Tensor:
    """Image score as the official code: `repeats` average poolings (kernel, stride 1), then the max."""
    x = maps[:, None]
    for _ in range(repeats):
        if min(x.shape[-2:]) < kernel:
            break
        x = F.avg_pool2d(x, kernel, stride=1)
    return x.flatten(1).amax(dim=1)


def finish_map(maps: torch.Tensor, masks: torch.Tensor | None, sigma: float) -> torch.Tensor:
    """Object mask first, then the Gaussian blur (the official order)."""
    if masks is not None:
        maps = maps * masks
    return gaussian_blur(maps, sigma)
