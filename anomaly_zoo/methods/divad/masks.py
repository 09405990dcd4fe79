"""Object masks that remove background false positives on object classes (`method.mask=...`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

MASKS = ("none", "dino_foreground", "cutler")

# MVTec classes whose map is never masked. "official": the DIVAD code's list (zipper skipped, grid masked);
# "textures": MVTec's five texture classes.
MASK_SKIP_LISTS = {
    "official": ("carpet", "leather", "wood", "tile", "zipper"),
    "textures": ("carpet", "grid", "leather", "tile", "wood"),
    "none": (),
}


def foreground_from_features(features: torch.Tensor, size: int) -> torch.Tensor:
    """Training-free foreground estimate from patch features: the first principal component, oriented so that
    the image border is background, thresholded at 0; (N, size, size) in {0, 1}.

    Dependency-free alternative to CutLER (whose masks must be precomputed with detectron2, see cutler_masks).
    """
    n, _, h, w = features.shape
    x = features.flatten(2).transpose(1, 2).float()  # (N, hw, C)
    x = x - x.mean(dim=1, keepdim=True)
    _, _, v = torch.linalg.svd(x, full_matrices=False)
    pc1 = (x @ v[:, 0, :, None])[..., 0].view(n, h, w)
    border = torch.ones(h, w, dtype=torch.bool, device=features.device)
    border[1:-1, 1:-1] = False
    sign = torch.where(pc1[:, border].mean(dim=1) > 0, -1.0, 1.0)
    fg = (pc1 * sign[:, None, None] > 0).float()
    return (F.interpolate(fg[:, None], size=(size, size), mode="nearest")[:, 0] > 0.5).float()


#: File names tried for an image `<stem>.<ext>`: the official CutLER script's npz (`arr_0`: N x H x W instance masks),
#: a plain npz, a binary PNG.
CUTLER_MASK_SUFFIXES = ("_cutler.png.npz", ".npz", ".png")


def _cutler_mask_file(image_path: str, dataset_root: str | Path | None, mask_dir: Path) -> Path:
    image = Path(image_path)
    try:
        rel = image.resolve().relative_to(Path(dataset_root).resolve()) if dataset_root else Path(image.name)
    except ValueError:  # an image outside the dataset (e.g. anomaly_zoo.predict on a folder): by file name
        rel = Path(image.name)
    candidates = [mask_dir / rel.parent / f"{rel.stem}{suffix}" for suffix in CUTLER_MASK_SUFFIXES]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"method.mask=cutler: no precomputed CutLER mask for {image_path}; looked for "
        f"{', '.join(str(c) for c in candidates)}. Run CutLER (cascade R50-FPN, confidence 0.1) over the images "
        "and save each image's instance masks there (the official DIVAD script writes <stem>_cutler.png.npz), or use "
        "method.mask=dino_foreground"
    )


def _read_mask(path: Path) -> np.ndarray:
    try:
        if path.suffix == ".npz":
            with np.load(path) as arrays:
                arr = arrays["arr_0"] if "arr_0" in arrays.files else arrays[arrays.files[0]]
        else:
            arr = np.asarray(Image.open(path).convert("L")) > 127
    except Exception as err:
        raise ValueError(f"cannot read CutLER mask {path}: {type(err).__name__}: {err}") from err
    arr = np.asarray(arr).astype(bool)
    if arr.ndim == 3:  # instance masks: their union; no detection (0 x H x W) gives an empty mask, as the official code
        arr = arr.any(axis=0)
    if arr.ndim != 2:
        raise ValueError(f"CutLER mask {path}: expected (H, W) or (N, H, W) masks, got shape {arr.shape}")
    return arr


def cutler_masks(
    image_paths: Sequence[str], dataset_root: str | Path | None, mask_dir: str | Path, size: int
) -> torch.Tensor:
    """Precomputed CutLER object masks for `image_paths`, (N, size, size) in {0, 1} (nearest resize).

    CutLER needs detectron2 (not on PyPI) and its weights, so, as in the official DIVAD workflow, masks are made once
    with CutLER's own demo and read here. They mirror the dataset's layout under `mask_dir`
    (`<mask_dir>/<category>/test/<defect>/<stem>_cutler.png.npz`).
    """
    mask_dir = Path(mask_dir)
    out = []
    for image_path in image_paths:
        arr = _read_mask(_cutler_mask_file(image_path, dataset_root, mask_dir))
        mask = torch.from_numpy(arr).float()[None, None]
        out.append(F.interpolate(mask, size=(size, size), mode="nearest")[0, 0])
    return torch.stack(out)
