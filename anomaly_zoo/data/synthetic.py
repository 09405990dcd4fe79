"""`dataset=synthetic`: an MVTec-layout benchmark generated offline from images shipped in wheels.

Sources are scikit-image's bundled photos (no pooch download). Normal images vary (random crops, poses,
lighting, sensor noise) so that a trivial pixel-difference or image-mean detector cannot solve the set;
defects are small and low-contrast, and every mask is exact: it marks precisely the pixels the defect
changed (hard-edged, no anti-aliasing).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage
from tqdm import tqdm

log = logging.getLogger(__name__)

GENERATOR_VERSION = 2  # bump on any change to the generated images: older copies are regenerated
SIZE = 256
TEXTURE_CATEGORIES = ("brick", "grass", "gravel")
OBJECT_CATEGORIES = ("coin", "logo", "horse")
CATEGORIES = TEXTURE_CATEGORIES + OBJECT_CATEGORIES
TEXTURE_DEFECTS = ("foreign_patch", "scratch", "stain")
OBJECT_DEFECTS = ("foreign_patch", "scratch", "stain", "missing_piece")
MARKER = "synthetic_dataset.json"
FOREIGN_PATCH_MIN_STD = 20.0  # grey levels


@dataclass(frozen=True)
class SyntheticSizes:
    """How many images per category: train (normal only), test normal, test per defect type."""

    train: int = 30
    test_good: int = 20
    test_per_defect: int = 5


# ---------------------------------------------------------------- sources (grey or RGB float32 in [0, 255])
def _skimage(name: str) -> np.ndarray:
    from skimage import data

    return np.asarray(getattr(data, name)(), dtype=np.float32)


def _rgb(img: np.ndarray) -> np.ndarray:
    return np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img[..., :3]


def _resize(img: np.ndarray, size: tuple[int, int], resample: int = Image.Resampling.BILINEAR) -> np.ndarray:
    """Resize a float [0,255] image (2-D or HxWx3) to (w, h)."""
    if img.ndim == 2:
        return np.asarray(Image.fromarray(img.astype(np.float32), mode="F").resize(size, resample))
    return np.stack([_resize(img[..., c], size, resample) for c in range(img.shape[2])], axis=2)


def _random_crop(rng: np.random.Generator, src: np.ndarray, crop: int) -> np.ndarray:
    y = int(rng.integers(0, src.shape[0] - crop + 1))
    x = int(rng.integers(0, src.shape[1] - crop + 1))
    return src[y : y + crop, x : x + crop]


# ------------------------------------------------------------------------------------------- normals
def _texture_normal(rng: np.random.Generator, src: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    crop = int(rng.integers(300, 400))
    img = _resize(_random_crop(rng, src, crop), (SIZE, SIZE))
    if rng.random() < 0.5:
        img = img[:, ::-1]
    if rng.random() < 0.5:
        img = img[::-1, :]
    img = _rgb(img) * rng.uniform(0.92, 1.08)
    return img, np.ones((SIZE, SIZE), dtype=bool)


def _place_object(
    rng: np.random.Generator, obj: np.ndarray, alpha: np.ndarray, background: float, max_angle: float, scale: tuple
) -> tuple[np.ndarray, np.ndarray]:
    """Paste an RGB object with a hard alpha mask onto a plain background at a jittered pose."""
    s = rng.uniform(*scale)
    side = int(SIZE * 0.8 * s)
    angle = rng.uniform(-max_angle, max_angle)
    obj_img = Image.fromarray(np.clip(obj, 0, 255).astype(np.uint8)).resize((side, side), Image.Resampling.BILINEAR)
    # Smooth upscaling then a hard threshold: clean outlines, still an exact binary foreground.
    alpha_img = Image.fromarray((alpha * 255).astype(np.uint8)).resize((side, side), Image.Resampling.BILINEAR)
    obj_img = obj_img.rotate(angle, Image.Resampling.BILINEAR)
    alpha_img = alpha_img.rotate(angle, Image.Resampling.NEAREST)
    canvas = np.full((SIZE, SIZE, 3), background, dtype=np.float32)
    canvas += rng.normal(0, 1.5, size=(SIZE, SIZE, 1)).astype(np.float32)  # faint shading noise
    fg = np.zeros((SIZE, SIZE), dtype=bool)
    off = (SIZE - side) // 2
    dy, dx = (int(v) for v in rng.integers(-10, 11, size=2))
    y0, x0 = off + dy, off + dx
    a = np.asarray(alpha_img) > 127
    canvas[y0 : y0 + side, x0 : x0 + side][a] = np.asarray(obj_img, dtype=np.float32)[a]
    fg[y0 : y0 + side, x0 : x0 + side] = a
    return canvas * rng.uniform(0.95, 1.05), fg


class _Sources:
    """The bundled photos, loaded once."""

    def __init__(self) -> None:
        self.textures = {name: _skimage(name) for name in TEXTURE_CATEGORIES}
        coins = _skimage("coins")
        labelled, _ = ndimage.label(ndimage.binary_fill_holes(ndimage.gaussian_filter(coins, 2) > 110))
        boxes = ndimage.find_objects(labelled)
        self.coins = []
        for i, box in enumerate(boxes, start=1):
            h, w = box[0].stop - box[0].start, box[1].stop - box[1].start
            if 35 <= h <= 80 and 35 <= w <= 80:
                half = max(h, w) // 2 + 2
                cy, cx = (box[0].start + box[0].stop) // 2, (box[1].start + box[1].stop) // 2
                sl = (slice(max(cy - half, 0), cy + half), slice(max(cx - half, 0), cx + half))
                self.coins.append((coins[sl], labelled[sl] == i))
        logo = _skimage("logo")
        yy, xx = np.mgrid[: logo.shape[0], : logo.shape[1]]
        c = (logo.shape[0] - 1) / 2
        self.logo = (logo[..., :3], (yy - c) ** 2 + (xx - c) ** 2 < (0.49 * logo.shape[0]) ** 2)  # the disc
        horse = ~np.asarray(_skimage("horse"), dtype=bool)
        side = max(horse.shape)
        pad = np.zeros((side, side), dtype=bool)
        pad[(side - horse.shape[0]) // 2 : (side - horse.shape[0]) // 2 + horse.shape[0]] = horse
        self.horse = pad
        # A brown coat with a faint grass-like grain: a plain object, not a second texture benchmark.
        grain = self.textures["grass"]
        self.coat_grain = (grain - grain.mean()) / grain.std()

    def normal(self, rng: np.random.Generator, category: str) -> tuple[np.ndarray, np.ndarray]:
        """A normal image (HxWx3 float) and its foreground (where defects may go)."""
        if category in self.textures:
            return _texture_normal(rng, self.textures[category])
        if category == "coin":
            coin, alpha = self.coins[int(rng.integers(len(self.coins)))]
            return _place_object(rng, _rgb(coin), alpha, background=45.0, max_angle=180, scale=(0.9, 1.0))
        if category == "logo":
            return _place_object(rng, *self.logo, background=205.0, max_angle=8, scale=(0.92, 1.02))
        if category == "horse":
            grain = _resize(_random_crop(rng, self.coat_grain, 256), self.horse.shape[::-1])
            brown = np.array([150.0, 100.0, 60.0]) * rng.uniform(0.9, 1.1)
            fur = brown * (1 + 0.12 * grain[..., None])
            if rng.random() < 0.5:
                return _place_object(rng, fur[:, ::-1], self.horse[:, ::-1], 225.0, 5, (0.9, 1.0))
            return _place_object(rng, fur, self.horse, background=225.0, max_angle=5, scale=(0.9, 1.0))
        raise KeyError(category)


# ------------------------------------------------------------------------------------------- defects
def _blob(rng: np.random.Generator, allowed: np.ndarray, radius: tuple[int, int]) -> np.ndarray:
    """A random smooth blob (thresholded, smoothed noise inside a jittered ellipse) within `allowed`."""
    r = int(rng.integers(*radius))
    ys, xs = np.nonzero(ndimage.binary_erosion(allowed, iterations=max(r // 2, 1)))
    if ys.size == 0:
        ys, xs = np.nonzero(allowed)
    k = int(rng.integers(ys.size))
    cy, cx = ys[k], xs[k]
    yy, xx = np.mgrid[:SIZE, :SIZE]
    ry, rx = r * rng.uniform(0.6, 1.4), r * rng.uniform(0.6, 1.4)
    theta = rng.uniform(0, np.pi)
    u = (yy - cy) * np.cos(theta) + (xx - cx) * np.sin(theta)
    v = -(yy - cy) * np.sin(theta) + (xx - cx) * np.cos(theta)
    noise = ndimage.gaussian_filter(rng.normal(size=(SIZE, SIZE)), r / 3) * r
    blob = (u / ry) ** 2 + (v / rx) ** 2 + 0.8 * noise / max(noise.std() * r, 1e-6) < 1.0
    blob = ndimage.binary_opening(blob) & allowed
    labelled, n = ndimage.label(blob)
    if n > 1:  # keep the largest piece: one region per defect
        blob = labelled == (np.argmax(np.bincount(labelled.ravel())[1:]) + 1)
    return blob


def _foreign_patch(rng, img, fg, sources: _Sources, category: str):
    mask = _blob(rng, fg, (10, 22))
    other = [c for c in TEXTURE_CATEGORIES if c != category]
    patch = _rgb(_resize(_random_crop(rng, sources.textures[other[int(rng.integers(len(other)))]], 300), (SIZE, SIZE)))
    region = img[mask]
    # Match the covered region's mean and (at least) its spread: the defect differs in structure, not in
    # brightness. The spread has a floor, so a patch on a smooth surface (the horse's coat) keeps a visible grain.
    patch_vals = patch[mask]
    spread = np.maximum(region.std(0), FOREIGN_PATCH_MIN_STD)
    patch_vals = (patch_vals - patch_vals.mean(0)) / (patch_vals.std(0) + 1e-6) * spread + region.mean(0)
    img[mask] = patch_vals
    return img, mask


def _scratch(rng, img, fg, sources, category):
    canvas = Image.new("L", (SIZE, SIZE), 0)
    ys, xs = np.nonzero(ndimage.binary_erosion(fg, iterations=12) if fg.sum() > 5000 else fg)
    k = int(rng.integers(ys.size))
    length, angle = rng.uniform(35, 70), rng.uniform(0, np.pi)
    bend = rng.uniform(-8, 8)
    pts = []
    for t in np.linspace(-0.5, 0.5, 12):
        pts.append(
            (
                float(xs[k] + t * length * np.cos(angle) + bend * (1 - 4 * t * t) * -np.sin(angle)),
                float(ys[k] + t * length * np.sin(angle) + bend * (1 - 4 * t * t) * np.cos(angle)),
            )
        )
    ImageDraw.Draw(canvas).line(pts, fill=255, width=int(rng.integers(3, 6)))
    mask = (np.asarray(canvas) > 0) & fg
    # A scratch exposes material of another brightness: blend towards a level that contrasts with the surface
    # it crosses (a fixed offset vanished in grass and gravel, whose own grain spans most of the grey range).
    target = 25.0 if img[mask].mean() > 128 else 230.0
    strength = rng.uniform(0.55, 0.8)
    img[mask] = img[mask] * (1 - strength) + target * strength
    return img, mask


def _stain(rng, img, fg, sources, category):
    mask = _blob(rng, fg, (10, 22))
    tint = rng.uniform(0.75, 1.25, size=3)
    tint = np.where(np.abs(tint - 1) < 0.15, 1 + np.sign(tint - 1 + 1e-9) * 0.15, tint)
    img[mask] = img[mask] * tint.astype(np.float32)
    return img, mask


def _missing_piece(rng, img, fg, sources, category):
    # A bite out of the object's outline: the blob centre sits on the boundary.
    edge = fg & ~ndimage.binary_erosion(fg, iterations=3)
    mask = _blob(rng, edge, (10, 18))
    mask = ndimage.binary_dilation(mask, iterations=6) & fg
    background = np.median(img[~fg], axis=0)
    img[mask] = background + rng.normal(0, 1.5, size=(int(mask.sum()), 1))
    return img, mask


DEFECTS: dict[str, Callable] = {
    "foreign_patch": _foreign_patch,
    "scratch": _scratch,
    "stain": _stain,
    "missing_piece": _missing_piece,
}


def defect_types(category: str) -> tuple[str, ...]:
    return TEXTURE_DEFECTS if category in TEXTURE_CATEGORIES else OBJECT_DEFECTS


# ------------------------------------------------------------------------------------------- writer
def _finish(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    img = img + rng.normal(0, 2.0, size=img.shape)  # sensor noise
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _category_rng(seed: int, category: str, split: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(f"{category}/{split}".encode())])


def _write_category(out: Path, category: str, sources: _Sources, seed: int, sizes: SyntheticSizes) -> None:
    rng = _category_rng(seed, category, "train")
    (out / category / "train" / "good").mkdir(parents=True)
    for i in range(sizes.train):
        img, _ = sources.normal(rng, category)
        Image.fromarray(_finish(img, rng)).save(out / category / "train" / "good" / f"{i:03d}.png")
    rng = _category_rng(seed, category, "test")
    (out / category / "test" / "good").mkdir(parents=True)
    for i in range(sizes.test_good):
        img, _ = sources.normal(rng, category)
        Image.fromarray(_finish(img, rng)).save(out / category / "test" / "good" / f"{i:03d}.png")
    for defect in defect_types(category):
        (out / category / "test" / defect).mkdir(parents=True)
        (out / category / "ground_truth" / defect).mkdir(parents=True)
        for i in range(sizes.test_per_defect):
            img, fg = sources.normal(rng, category)
            img, mask = DEFECTS[defect](rng, img, fg, sources, category)
            final = _finish(img, rng)
            Image.fromarray(final).save(out / category / "test" / defect / f"{i:03d}.png")
            Image.fromarray(mask.astype(np.uint8) * 255).save(
                out / category / "ground_truth" / defect / f"{i:03d}_mask.png"
            )


def _marker(seed: int, sizes: SyntheticSizes) -> dict:
    return {"generator_version": GENERATOR_VERSION, "seed": seed, "sizes": sizes.__dict__, "categories": CATEGORIES}


def ensure_synthetic_dataset(root: str | Path, seed: int = 0, sizes: SyntheticSizes | None = None) -> Path:
    """Generate the dataset into `root` unless an identical one (same version, seed, sizes) is there.

    Writes into a temporary sibling directory and renames it into place, so an interrupted run never
    leaves a half-written dataset. A copy this generator wrote with other settings or an older
    GENERATOR_VERSION (its marker says so) is regenerated in place. A `root` that exists but was not
    written by this generator is never touched: that is an error.
    """
    root = Path(root)
    sizes = sizes or SyntheticSizes()
    wanted = _marker(seed, sizes)
    marker = root / MARKER
    stale = marker.is_file()
    if stale:
        found = json.loads(marker.read_text())
        if found == json.loads(json.dumps(wanted)):
            return root
        log.warning("%s holds a synthetic dataset generated with other settings (%s): regenerating it with %s",
                    root, json.dumps(found), json.dumps(wanted))  # fmt: skip
    elif root.exists() and any(root.iterdir()):
        raise FileExistsError(
            f"{root} exists and is not a generated synthetic dataset (no {MARKER}); refusing to write into it. "
            "Point dataset.root at an empty or new directory."
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".synthetic-", dir=root.parent))
    try:
        sources = _Sources()
        for category in tqdm(CATEGORIES, desc=f"generating synthetic dataset in {root}", unit="category"):
            _write_category(tmp, category, sources, seed, sizes)
        (tmp / MARKER).write_text(json.dumps(wanted, indent=1))
        if stale:  # our own older copy: move it aside, put the new one in place, then delete the old one
            old = Path(tempfile.mkdtemp(prefix=".synthetic-old-", dir=root.parent))
            root.rename(old / "synthetic")
            tmp.rename(root)
            shutil.rmtree(old, ignore_errors=True)
        else:
            if root.exists():
                root.rmdir()  # empty (checked above)
            tmp.rename(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root
