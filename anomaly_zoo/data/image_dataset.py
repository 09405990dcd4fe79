"""A torch Dataset over `Sample`s: reads, validates, resizes and normalises images and masks."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from anomaly_zoo.backbones.feature_extractor import NORMALIZATIONS
from anomaly_zoo.data.samples import Sample


class ImageReadError(ValueError):
    """An image or mask file cannot be read or does not fit its image."""


def read_rgb(path: str | Path) -> Image.Image:
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise ImageReadError(f"cannot read image {path}: {err}. Replace or remove the file.") from err


def read_mask(path: str | Path, image_size: tuple[int, int]) -> np.ndarray:
    """A binary mask (H, W) of the image's size (PIL size order: width, height)."""
    try:
        with Image.open(path) as img:
            mask = np.asarray(img.convert("L")) > 0
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise ImageReadError(f"cannot read mask {path}: {err}. Replace or remove the file.") from err
    if mask.shape[::-1] != tuple(image_size):
        raise ImageReadError(
            f"mask {path} is {mask.shape[1]}x{mask.shape[0]} but its image is {image_size[0]}x{image_size[1]} "
            "(width x height); masks must have their image's size"
        )
    return mask


class AnomalyImageDataset(Dataset):
    """Yields dicts: image (3,H,W) float, mask (H,W) float in {0,1}, label, category, path, index."""

    def __init__(
        self,
        samples: Sequence[Sample],
        image_size: int | Sequence[int],
        normalization: str = "none",
        require_masks: bool = True,
    ) -> None:
        self.samples = list(samples)
        self.size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        mean, std = NORMALIZATIONS[normalization]
        self.mean, self.std = list(mean), list(std)
        self.require_masks = require_masks

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        pil = read_rgb(sample.image_path)
        image = TF.to_dtype(TF.pil_to_tensor(pil), torch.float32, scale=True)
        image = TF.resize(image, list(self.size), antialias=True)
        image = TF.normalize(image, self.mean, self.std)
        if sample.mask_path is not None:
            mask = torch.from_numpy(read_mask(sample.mask_path, pil.size)).float()[None]
            mask = TF.resize(mask, list(self.size), interpolation=TF.InterpolationMode.NEAREST)[0]
        elif sample.label == 1 and self.require_masks:
            raise ImageReadError(
                f"defective test image {sample.image_path} has no ground-truth mask; pixel metrics need one. "
                "Add the mask, or set dataset.require_masks=false to score it with an empty mask."
            )
        else:
            mask = torch.zeros(self.size, dtype=torch.float32)
        return {
            "image": image,
            "mask": mask,
            "label": sample.label,
            "category": sample.category,
            "path": sample.image_path,
            "index": index,
        }
