"""Pieces several methods share: map upsampling, Gaussian blur, k-center greedy coreset selection."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm import tqdm


def upsample_maps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, h, w) → (N, H, W) by bilinear interpolation (no-op when already that size)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]


#: Border handling of `gaussian_blur`: "reflect" mirrors about the edge pixel (torch's reflect, d c b | a b c d);
#: "symmetric" repeats it (scipy.ndimage's default "reflect", c b a | a b c d), as the official DIVAD code blurs
#: with scipy's gaussian_filter.
BLUR_BORDERS = ("reflect", "symmetric")


def _symmetric_index(n: int, radius: int, device) -> torch.Tensor:
    """Indices of a length-n axis padded by `radius` on both sides with half-sample symmetric reflection."""
    i = torch.arange(-radius, n + radius, device=device) % (2 * n)
    return torch.where(i < n, i, 2 * n - 1 - i)


def gaussian_blur(maps: torch.Tensor, sigma: float, border: str = "reflect") -> torch.Tensor:
    """Separable Gaussian blur of (N, H, W) maps, radius 4 sigma (scipy's truncate=4), `border` in BLUR_BORDERS."""
    if border not in BLUR_BORDERS:
        raise ValueError(f"blur border={border!r} is not one of {BLUR_BORDERS}")
    if sigma <= 0:
        return maps
    radius = int(4 * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    out = maps[:, None]
    if border == "symmetric":
        h, w = out.shape[-2:]
        out = out[..., _symmetric_index(w, radius, out.device)]
        out = F.conv2d(out, kernel.view(1, 1, 1, -1))
        out = out[..., _symmetric_index(h, radius, out.device), :]
        return F.conv2d(out, kernel.view(1, 1, -1, 1))[:, 0]
    out = F.conv2d(F.pad(out, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    out = F.conv2d(F.pad(out, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1))
    return out[:, 0]


def greedy_coreset(features: torch.Tensor, size: int, projection_dim: int = 128, seed: int = 0) -> torch.Tensor:
    """Indices of a k-center greedy coreset (PatchCore), selected on a random projection.

    The projection (as in the PatchCore paper) cuts the cost of each distance update by
    dim/projection_dim; distances to the selected set are updated incrementally, one matrix-vector
    product per selected point. Deterministic for a given seed.
    """
    n = features.shape[0]
    if size >= n:
        return torch.arange(n)
    gen = torch.Generator().manual_seed(seed)
    x = features.float()
    if projection_dim and x.shape[1] > projection_dim:
        proj = torch.randn(x.shape[1], projection_dim, generator=gen) / projection_dim**0.5
        x = x @ proj.to(x.device)
    sq = (x * x).sum(1)
    selected = torch.empty(size, dtype=torch.long)
    current = int(torch.randint(n, (1,), generator=gen))
    min_dist = torch.full((n,), float("inf"), device=x.device)
    for i in tqdm(range(size), desc="coreset selection", leave=False, mininterval=2.0):
        selected[i] = current
        dist = sq - 2 * (x @ x[current]) + sq[current]
        torch.minimum(min_dist, dist, out=min_dist)
        current = int(torch.argmax(min_dist))
    return selected
