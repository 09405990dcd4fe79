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


#: What CutLER's demo (DIVAD's `cutler/demo_batch_mvtec_visa.py`) writes per test image `<name>` (extension kept):
#: `np.savez(f"{save_dir}/{category}/{defect}/{name}_cutler.png", masks)`, so numpy adds `.npz`; `arr_0` holds the
#: N x H x W instance masks (or H x W when N = 1, squeezed).
OFFICIAL_MASK_SUFFIX = "_cutler.png.npz"
#: Also accepted, by image stem: this project's earlier mirror of the dataset layout, a plain npz, a binary PNG.
OTHER_MASK_SUFFIXES = ("_cutler.png.npz", ".npz", ".png")


def cutler_mask_candidates(image_path: str, dataset_root: str | Path | None, mask_dir: str | Path) -> list[Path]:
    """Where the CutLER mask of an image may be, in order. For `<root>/<category>/test/<defect>/<name>` the official
    layout `<mask_dir>/<category>/<defect>/<name>_cutler.png.npz` comes first, then
    `<mask_dir>/<category>/test/<defect>/<stem><suffix>`; images outside the dataset (`anomaly_zoo.predict` on a
    folder) are looked up by file name directly under `mask_dir`."""
    image, mask_dir = Path(image_path), Path(mask_dir)
    try:
        rel = image.resolve().relative_to(Path(dataset_root).resolve()) if dataset_root else Path(image.name)
    except ValueError:  # an image outside the dataset
        rel = Path(image.name)
    official = rel.parent
    if len(rel.parts) >= 3 and rel.parts[-3] == "test":  # <category>/test/<defect>/<name> → <category>/<defect>
        official = Path(*rel.parts[:-3], rel.parts[-2])
    candidates = [mask_dir / official / f"{rel.name}{OFFICIAL_MASK_SUFFIX}"]
    candidates += [mask_dir / rel.parent / f"{rel.stem}{suffix}" for suffix in OTHER_MASK_SUFFIXES]
    return list(dict.fromkeys(candidates))


def _cutler_mask_file(image_path: str, dataset_root: str | Path | None, mask_dir: Path) -> Path:
    candidates = cutler_mask_candidates(image_path, dataset_root, mask_dir)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"method.mask=cutler: no precomputed CutLER mask for {image_path}; looked for "
        f"{', '.join(str(c) for c in candidates)}. Run CutLER (cascade R50-FPN, confidence 0.1) over the images "
        "with DIVAD's cutler/demo_batch_mvtec_visa.py (it writes <category>/<defect>/<name>_cutler.png.npz) and "
        "point method.cutler_mask_dir at its output, or use method.mask=dino_foreground"
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
    """Precomputed CutLER object masks for `image_paths`, (N, size, size) in {0, 1}: the union of the instances,
    resized with PIL's nearest filter as the official test.py does (`Image.fromarray(mask).resize(size)`).

    CutLER needs detectron2 (not on PyPI) and its weights, so, as in the official DIVAD workflow, masks are made once
    with CutLER's own demo and read here (file layout: `cutler_mask_candidates`).
    """
    mask_dir = Path(mask_dir)
    out = []
    for image_path in image_paths:
        arr = _read_mask(_cutler_mask_file(image_path, dataset_root, mask_dir))
        resized = Image.fromarray(arr).resize((size, size), Image.Resampling.NEAREST)
        out.append(torch.from_numpy(np.array(resized, dtype=bool)).float())
    return torch.stack(out)
