"""A torch Dataset over `Sample`s: reads, validates, resizes and normalises images and masks."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import numpy as np
import torch
from PIL import ExifTags, Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from anomaly_zoo.backbones.feature_extractor import NORMALIZATIONS
from anomaly_zoo.data.samples import Sample
from anomaly_zoo.data.views import ImageView, render_views, unit_tensor_to_pil

#: How ground-truth masks reach the evaluation size. nearest: nearest neighbour; bilinear_nonzero: PIL bilinear
#: on the 0/255 mask, then every non-zero pixel is defective (the official DIVAD evaluation: torchvision Resize,
#: then `> 0` in its metric code), which grows defects by about a pixel when downscaling.
MASK_RESIZES = ("nearest", "bilinear_nonzero")


#: File name suffixes the reader accepts (lower case): predict's folder scan, the dataset layout check.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


class ImageReadError(ValueError):
    """An image or mask file cannot be read or does not fit its image."""


#: Pillow modes whose pixels are wider than 8 bits, with the value that means full scale. Pillow's convert("RGB")
#: clips them at 255 (a 16-bit camera image turns all white), so they are scaled here before anything else.
_WIDE_MODES = {"I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I;16N": 65535.0, "I": 65535.0, "F": 1.0}


def _pixels(img: Image.Image, path: str | Path) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1], scaled by the file's bit depth.

    8-bit grey, RGB, RGBA (alpha dropped), palette, 1-bit and CMYK go through Pillow's conversion; 16-bit grey
    (PNG, TIFF) is divided by 65535; 16-bit RGB(A) PNG/TIFF, which Pillow would cut to their high byte, are decoded
    by OpenCV at full depth. 32-bit integer images ("I", e.g. 16-bit PNG in older Pillow) count as 16-bit unless
    larger.
    """
    if img.mode in ("RGB", "RGBA") and _sixteen_bit_colour(img):
        import cv2  # OpenCV keeps 16-bit colour; anomalib depends on it too

        decoded = cv2.imdecode(np.fromfile(str(path), np.uint8), cv2.IMREAD_UNCHANGED)  # any path's bytes
        if decoded is not None and decoded.dtype == np.uint16 and decoded.ndim == 3:
            rgb = cv2.cvtColor(decoded, cv2.COLOR_BGRA2RGB if decoded.shape[2] == 4 else cv2.COLOR_BGR2RGB)
            return rgb.astype(np.float32) / np.float32(65535.0)
    if img.mode in _WIDE_MODES:
        values = np.asarray(img, dtype=np.float64)
        full = _WIDE_MODES[img.mode]
        if img.mode == "I" and values.size and values.max() > 65535:
            full = float(2**32 - 1)
        grey = np.clip(values / full, 0.0, 1.0).astype(np.float32)
        return np.repeat(grey[..., None], 3, axis=-1)
    return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0


def _sixteen_bit_colour(img: Image.Image) -> bool:
    """Whether Pillow's decoder for this file reads 16-bit samples (raw mode e.g. RGB;16B for PNG, RGB;16L TIFF)."""
    for tile in getattr(img, "tile", None) or []:
        args = tile[3] if len(tile) > 3 else None
        rawmode = args[0] if isinstance(args, tuple) and args else args
        if isinstance(rawmode, str) and ";16" in rawmode:
            return True
    return False


def exif_orientation(img: Image.Image) -> int:
    """The EXIF Orientation tag (1-8; 1: stored as shown) of a just-opened image, read from its header only.

    Read before decoding, so that the test-split check (which never decodes) and the reader agree on every file;
    a PNG's eXIf chunk counts where it precedes the pixel data (where Pillow and cameras write it).
    """
    if img.format == "PNG" and "exif" not in img.info:
        return 1  # Pillow's getexif() would decode the whole image to look behind the pixel data
    try:
        value = img.getexif().get(ExifTags.Base.Orientation, 1)
    except (OSError, ValueError, SyntaxError, struct.error):
        return 1  # a damaged EXIF block: the pixels as stored
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def displayed_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) as viewers show a just-opened image: swapped for the EXIF orientations that turn it 90°."""
    w, h = img.size
    return (h, w) if exif_orientation(img) >= 5 else (w, h)


def _orient(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """(H, W, C) pixels as stored → as shown: the transform EXIF Orientation asks for (Pillow's exif_transpose)."""
    if orientation >= 5:  # 5-8 mirror about the main diagonal first: transpose, then as 1-4
        pixels = pixels.transpose(1, 0, 2)
        orientation = {5: 1, 6: 2, 7: 3, 8: 4}[orientation]
    if orientation in (2, 3):
        pixels = pixels[:, ::-1]
    if orientation in (3, 4):
        pixels = pixels[::-1]
    return np.ascontiguousarray(pixels)


def _open(path: str | Path, what: str) -> np.ndarray:
    """The file's pixels as viewers show them: decoded at its bit depth, then turned by its EXIF orientation."""
    try:
        with Image.open(path) as img:
            orientation = exif_orientation(img)
            return _orient(_pixels(img, path), orientation)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as err:
        raise ImageReadError(f"cannot read {what} {path}: {err}. Replace or remove the file.") from err


def load_image(path: str | Path) -> torch.Tensor:
    """The one image reader (datamodule, predict, heatmaps): (3, H, W) float32 in [0, 1] at the file's size."""
    return torch.from_numpy(np.ascontiguousarray(_open(path, "image").transpose(2, 0, 1)))


def to_model_input(
    original: torch.Tensor,
    size: tuple[int, int],
    normalization: str = "none",
    views: dict[str, ImageView] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The one transform from a decoded file (`load_image`) to what a method receives, shared by the datamodule and
    `anomaly_zoo.predict`: the image resized to `size` (H, W) and normalised, and the method's input views rendered
    from the same decode."""
    mean, std = NORMALIZATIONS[normalization]
    image = TF.normalize(TF.resize(original, list(size), antialias=True), list(mean), list(std))
    rendered = render_views(unit_tensor_to_pil(original), views) if views else {}
    return image, rendered


def read_mask(path: str | Path, image_size: tuple[int, int]) -> np.ndarray:
    """A binary mask (H, W) of the image's size (PIL size order: width, height); any non-zero pixel is defective."""
    mask = _open(path, "mask").max(axis=-1) > 0
    if mask.shape[::-1] != tuple(image_size):
        raise ImageReadError(
            f"mask {path} is {mask.shape[1]}x{mask.shape[0]} but its image is {image_size[0]}x{image_size[1]} "
            "(width x height); masks must have their image's size"
        )
    return mask


def resize_mask(mask: np.ndarray, size: tuple[int, int], mode: str = "nearest") -> torch.Tensor:
    """(H, W) bool mask → (size) float in {0, 1} (`size` is (H, W)); `mode` one of MASK_RESIZES."""
    if mode == "bilinear_nonzero":
        pil = Image.fromarray(mask.astype(np.uint8) * 255).resize(size[::-1], Image.Resampling.BILINEAR)
        return torch.from_numpy(np.asarray(pil) > 0).float()
    if mode != "nearest":
        raise ValueError(f"dataset.mask_resize={mode!r} is not one of {MASK_RESIZES}")
    resized = TF.resize(torch.from_numpy(mask).float()[None], list(size), interpolation=TF.InterpolationMode.NEAREST)
    return resized[0]


class AnomalyImageDataset(Dataset):
    """Yields dicts: image (3,H,W) float, mask (H,W) float in {0,1}, label, category, path, index, and `views`
    (name → (3,h,w) in [0, 1]) when input views are asked for."""

    def __init__(
        self,
        samples: Sequence[Sample],
        image_size: int | Sequence[int],
        normalization: str = "none",
        require_masks: bool = True,
        mask_resize: str = "nearest",
        views: dict[str, ImageView] | None = None,
    ) -> None:
        if mask_resize not in MASK_RESIZES:
            raise ValueError(f"dataset.mask_resize={mask_resize!r} is not one of {MASK_RESIZES}")
        self.samples = list(samples)
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        self.size = cast(tuple[int, int], size)
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"dataset.normalization={normalization!r} is not one of {sorted(NORMALIZATIONS)}")
        self.normalization = normalization
        self.require_masks = require_masks
        self.mask_resize = mask_resize
        self.views = dict(views or {})

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        original = load_image(sample.image_path)
        full_size = (original.shape[2], original.shape[1])  # width, height, as the mask check names them
        image, rendered = to_model_input(original, self.size, self.normalization, self.views)
        if sample.masks:  # several files (MVTec LOCO): one defect region each, united
            union = np.logical_or.reduce([read_mask(path, full_size) for path in sample.masks])
            mask = resize_mask(union, self.size, self.mask_resize)
        elif sample.label == 1 and self.require_masks:
            raise ImageReadError(
                f"defective test image {sample.image_path} has no ground-truth mask; pixel metrics need one. "
                "Add the mask, or set dataset.require_masks=false to score it with an empty mask."
            )
        else:
            mask = torch.zeros(self.size, dtype=torch.float32)
        item = {
            "image": image,
            "mask": mask,
            "label": sample.label,
            "category": sample.category,
            "path": sample.image_path,
            "index": index,
        }
        if self.views:
            item["views"] = rendered
        return item
