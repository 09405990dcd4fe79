"""Extra resizes of an image file that a method asks for besides the batch's `image` ("input views").

Some methods feed networks at sizes other than the evaluation size (DIVAD: Stable Diffusion at 512 px, DINO at
256 px) and must resize the original file once, as their reference code does, rather than re-scale the already
resized evaluation image. A method lists its views in `AnomalyMethod.input_views()`; the dataset and the folder
predictor render them from the same decoded image (no second read) into `batch["views"][name]`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass(frozen=True)
class ImageView:
    """A square PIL resize of the original RGB file (antialiased filters, uint8 result, as PIL does)."""

    size: int
    resample: str = "bicubic"

    def __post_init__(self) -> None:
        if self.resample not in RESAMPLING:
            raise ValueError(f"input view resample={self.resample!r} is not one of {sorted(RESAMPLING)}")


def pil_to_unit_tensor(image: Image.Image) -> torch.Tensor:
    """uint8 PIL image → (C, H, W) float32 in [0, 1] (x / 255, as torchvision's to_tensor)."""
    arr = np.asarray(image, dtype=np.uint8)
    arr = arr[..., None] if arr.ndim == 2 else arr
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255)


def unit_tensor_to_pil(image: torch.Tensor) -> Image.Image:
    """(3, H, W) float in [0, 1] (load_image) → uint8 RGB PIL image; exact for 8-bit files (x / 255 * 255)."""
    arr = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(np.ascontiguousarray(arr), "RGB")


def render_view(image: Image.Image, view: ImageView) -> torch.Tensor:
    return pil_to_unit_tensor(image.resize((view.size, view.size), RESAMPLING[view.resample]))


def render_views(image: Image.Image, views: Mapping[str, ImageView]) -> dict[str, torch.Tensor]:
    return {name: render_view(image, view) for name, view in views.items()}
