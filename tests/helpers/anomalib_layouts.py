"""Tiny on-disk layouts of issue #26's datasets (MVTec AD 2, Real-IAD, MVTec LOCO), shared by the datasets tests and
the end-to-end runs. Images are grey noise (R = G = B, seeded by the file name) with their defect regions painted
brighter, so that a per-pixel method finds the defects (not perfectly) and its maps can be recomputed from the files."""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = (48, 32)  # width, height: the smallest height the configs accept (32), at full resolution
Box = tuple[int, int, int, int]  # x0, y0, x1, y1
DEFECT_LIFT = 12  # how much brighter a defect region is than its image (its noise overlaps the normal pixels')


def image(path: Path, value: int = 128, defects: Sequence[Box] = ()) -> str:
    """An RGB image of SIZE: grey `value` ± 12 of noise, each box in `defects` DEFECT_LIFT brighter."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(zlib.crc32(f"{'/'.join(path.parts[-4:])}/{value}".encode()))
    grey = value + rng.integers(-12, 13, SIZE[::-1])
    for x0, y0, x1, y1 in defects:
        grey[y0:y1, x0:x1] += DEFECT_LIFT
    grey = np.clip(grey, 0, 255).astype(np.uint8)
    Image.fromarray(np.repeat(grey[..., None], 3, axis=2)).save(path)
    return str(path)


def mask(path: Path, box: Box | None = (2, 2, 8, 6), value: int = 255) -> str:
    """A mask of SIZE, `value` inside `box` (None: all black)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros(SIZE[::-1], np.uint8)
    if box:
        arr[box[1] : box[3], box[0] : box[2]] = value
    Image.fromarray(arr).save(path)
    return str(path)


def mvtec_ad2(root: Path, category: str = "can", val: int = 1, good: int = 1) -> dict[str, list[str]]:
    """MVTec AD 2: train/good, validation/good, test_public/{good,bad} + ground_truth/bad/*_mask.png, and the two
    private test splits (no ground truth)."""
    cat = root / category
    box = (2, 2, 8, 6)
    written = {
        "train": [image(cat / f"train/good/{i:03d}_regular.png") for i in range(3)],
        "val": [image(cat / f"validation/good/{i:03d}_regular.png", 120 + 4 * i) for i in range(val)],
        "public_good": [image(cat / f"test_public/good/{i:03d}_regular.png") for i in range(good)],
        "public_bad": [image(cat / f"test_public/bad/{good:03d}_overexposed.png", 140, [box])],
        "private": [image(cat / f"test_private/{i:03d}_regular.png") for i in range(2)],
        "mixed": [image(cat / "test_private_mixed/000_mixed.png")],
    }
    written["mask"] = [mask(cat / f"test_public/ground_truth/bad/{good:03d}_overexposed_mask.png", box)]
    return written


#: Real-IAD objects of the default layout: (split, object folder, OK | NG)
REALIAD_OBJECTS = (("train", "S0001", "OK"), ("test", "S0002", "OK"), ("test", "S0003", "NG"))


def realiad(root: Path, json_dir: str = "realiad_jsons/realiad_jsons", category: str = "audiojack",
            objects: Sequence[tuple[str, str, str]] = REALIAD_OBJECTS) -> dict[str, list]:  # fmt: skip
    """Real-IAD at resolution 256: two camera views per object; an NG object's first view shows the defect (its mask
    a box), its second does not (an all-black mask); the split file lists every view."""
    cat = root / "realiad_256" / category
    entries: dict[str, list] = {"train": [], "test": []}
    for split, sample, kind in objects:
        for view in (1, 2):
            rel = f"{kind}/{'AK/' if kind == 'NG' else ''}{sample}/{category}_{sample[1:]}_{kind}_C{view}_2023.jpg"
            box = (0, 0, 4, 4) if kind == "NG" and view == 1 else None
            image(cat / rel, 126 + 2 * (int(sample[1:]) % 5), [box] if box else [])
            mask_rel = None
            if kind == "NG":
                mask_rel = rel.replace(".jpg", ".png")
                mask(cat / mask_rel, box)
            entries[split].append({"category": category, "anomaly_class": kind, "image_path": rel,
                                   "mask_path": mask_rel})  # fmt: skip
    (root / json_dir).mkdir(parents=True, exist_ok=True)
    (root / json_dir / f"{category}.json").write_text(json.dumps({"meta": {}, **entries}))
    return entries


#: MVTec LOCO defect types of the layout (defects_config.json): an absolute and two relative saturations
LOCO_DEFECTS = [
    {"defect_name": "missing_item", "pixel_value": 255, "saturation_threshold": 6, "relative_saturation": False},
    {"defect_name": "extra_item", "pixel_value": 254, "saturation_threshold": 0.5, "relative_saturation": True},
    {"defect_name": "scratch", "pixel_value": 253, "saturation_threshold": 1.0, "relative_saturation": True},
]
#: The defect regions: per test image, its ground-truth PNGs as (box, pixel value)
LOCO_REGIONS = {
    "logical_anomalies": [((0, 0, 3, 3), 255), ((10, 10, 12, 12), 254)],
    "structural_anomalies": [((4, 4, 8, 8), 253)],
}


def loco(root: Path, config: bool = True, category: str = "breakfast_box", good: int = 1) -> dict[str, str]:
    """MVTec LOCO as its download lays it out: a defective image's ground truth is a folder named after it with one
    PNG per defect region (000.png, 001.png, ...), each holding 0 and the pixel value of its defect type in the
    category's defects_config.json (what anomalib's MVTecLOCODataset and MVTec's sPRO evaluation read)."""
    cat = root / category
    w = {"train": image(cat / "train/good/000.png"), "val": image(cat / "validation/good/000.png")}
    for i in range(good):
        w["good" if i == 0 else f"good{i}"] = image(cat / f"test/good/{i:03d}.png", 128 + 3 * i)
    for kind, regions in LOCO_REGIONS.items():
        short = kind.split("_")[0]
        w[short] = image(cat / f"test/{kind}/000.png", 132, [box for box, _ in regions])
        for j, (box, value) in enumerate(regions):
            w[f"{short[0]}{j}"] = mask(cat / f"ground_truth/{kind}/000/{j:03d}.png", box, value)
    if config:
        (cat / "defects_config.json").write_text(json.dumps(LOCO_DEFECTS))
    return w
