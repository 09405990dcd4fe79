"""`anomaly_zoo.predict ... submission=mvtec_ad2`: the maps of MVTec AD 2's test splits in the layout its evaluation
server (https://benchmark.mvtec.com) takes, besides the usual scores.csv and overlays.

Per image `<dataset root>/<object>/<split>/<name>.png` (split: test_private, test_private_mixed, or test_public/<good|
bad>), relative path kept:
  `<output>/anomaly_images/<object>/<split>/<name>.tiff`: the anomaly map at the image's own size, float16 TIFF;
  `<output>/anomaly_images_thresholded/<object>/<split>/<name>.png`: uint8, 255 where the map > threshold, else 0.
The folder names, suffixes and relative paths are those of `get_relative_anomaly_image_out_path` in MVTec's public
code utils (mvtec_ad_2_public_offline.py); float16 TIFF and 0/255 PNG are what submission scripts written for the
server use. data/README.md ("MVTec AD 2") says what was and was not verified.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from anomaly_zoo.data.image_dataset import displayed_size

SUBMISSIONS = ("mvtec_ad2",)
MVTEC_AD2_SPLITS = ("test_private", "test_private_mixed", "test_public")


def check_submission(submission: str | None, threshold: float | None) -> None:
    if submission is None:
        return
    if submission not in SUBMISSIONS:
        raise ValueError(f"submission={submission!r} is not one of {', '.join(SUBMISSIONS)} (or null)")
    if threshold is None:
        raise ValueError("submission=mvtec_ad2 writes thresholded maps: pass threshold=<value> or a checkpoint that "
                         "records one (trained with validation images)")  # fmt: skip


def relative_path(image: Path) -> Path:
    """`<object>/<split>/.../<name>` of an image in an MVTec AD 2 tree (what the server's layout keeps)."""
    parts = image.parts
    found = [i for i, part in enumerate(parts) if part in MVTEC_AD2_SPLITS and i > 0]
    if not found:
        raise ValueError(f"submission=mvtec_ad2: {image} is not in an MVTec AD 2 test split folder "
                         f"(<root>/<object>/{{{','.join(MVTEC_AD2_SPLITS)}}}/...)")  # fmt: skip
    return Path(*parts[found[-1] - 1 :])


def planned(images: list[Path]) -> list[str]:
    """The files a submission writes, relative to the output folder (checked before any work)."""
    return [str(Path(folder) / relative_path(p).with_suffix(suffix)) for p in images
            for folder, suffix in (("anomaly_images", ".tiff"), ("anomaly_images_thresholded", ".png"))]  # fmt: skip


def write(output: Path, image: Path, amap: np.ndarray, threshold: float) -> None:
    """The image's map, bilinearly resized to the image's size, as float16 TIFF and thresholded PNG."""
    import tifffile  # scikit-image's dependency: a float16 TIFF, which Pillow cannot write

    with Image.open(image) as img:
        width, height = displayed_size(img)
    grid = torch.from_numpy(np.asarray(amap, dtype=np.float32).squeeze())[None, None]
    full = torch.nn.functional.interpolate(grid, size=(height, width), mode="bilinear", align_corners=False)[0, 0]
    values = full.numpy().astype(np.float16)  # the PNG thresholds what the TIFF holds: the two files agree
    rel = relative_path(image)
    for folder in ("anomaly_images", "anomaly_images_thresholded"):
        (output / folder / rel).parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(output / "anomaly_images" / rel.with_suffix(".tiff"), values)
    binary = np.where(values > threshold, 255, 0).astype(np.uint8)
    Image.fromarray(binary).save(output / "anomaly_images_thresholded" / rel.with_suffix(".png"))
