"""`anomaly_zoo.predict`: scores, heatmap overlays, scores.csv and report.html for a folder of images."""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch
from tqdm import tqdm

from anomaly_zoo.data.context import Batch
from anomaly_zoo.data.image_dataset import IMAGE_EXTENSIONS, ImageReadError, load_image, to_model_input
from anomaly_zoo.inference import submission as submission_files
from anomaly_zoo.methods.base import AnomalyMethod
from anomaly_zoo.reporting import save_overlay
from anomaly_zoo.reporting.html_report import write_report

log = logging.getLogger(__name__)


@dataclass
class PredictionRow:
    path: str
    category: str = ""
    score: float | None = None
    decision: str = ""
    overlay: str = ""  # relative to the output folder
    error: str = ""


def find_images(input_path: str | Path, skipped: list[Path] | None = None) -> list[Path]:
    """Every jpg/png/bmp/tif below `input_path` (or the file itself), sorted; clear errors otherwise.

    Other files (and hidden folders' contents) are not images: they are appended to `skipped` when given.
    """
    root = Path(input_path).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"input={input_path}: no such file or folder")
    if root.is_file():
        if root.suffix.lower() not in IMAGE_EXTENSIONS:
            raise FileNotFoundError(f"input={input_path}: not an image ({', '.join(IMAGE_EXTENSIONS)})")
        return [root]
    files = sorted(p for p in root.rglob("*") if p.is_file())
    found = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
    if skipped is not None:
        skipped += [p for p in files if p.suffix.lower() not in IMAGE_EXTENSIONS]
    if not found:
        raise FileNotFoundError(
            f"input={input_path}: no images ({', '.join(IMAGE_EXTENSIONS)}) in this folder or below"
        )
    return found


def _overlay_name(path: Path, root: Path) -> str:
    """overlays/<path relative to the input, extension kept>.png: one overlay per input file, never shared
    (`a.png` and `a.jpg`, or `sub/a.png` and `sub__a.png`, would collide if the name were flattened or stripped)."""
    rel = path.relative_to(root) if root.is_dir() else Path(path.name)
    return (Path("overlays") / rel.parent / f"{rel.name}.png").as_posix()


def _check_output_outside_input(output: Path, root: Path) -> None:
    if root.is_dir() and output.resolve().is_relative_to(root.resolve()):
        raise ValueError(
            f"output={output} is inside input={root}: the next run would score this run's overlays; "
            "choose an output folder outside the input folder"
        )


def _check_output(output: Path, planned: list[str], overwrite: bool) -> None:
    clashes = [name for name in planned if (output / name).exists()]
    if clashes and not overwrite:
        raise FileExistsError(
            f"output={output} already holds {len(clashes)} of this run's files (e.g. {clashes[0]}); "
            "choose another output folder or pass overwrite=true (nothing else in it is touched)"
        )


@torch.no_grad()
def predict_folder(
    method: AnomalyMethod,
    input_path: str | Path,
    output: str | Path,
    image_size: int,
    threshold: float | None,
    threshold_source: str,
    batch_size: int = 8,
    category: str | None = None,
    overwrite: bool = False,
    normalization: str = "none",
    submission: str | None = None,
) -> list[PredictionRow]:
    """Score every image under `input_path`; write overlays, scores.csv and report.html into `output` (and, with
    `submission=mvtec_ad2`, the maps in MVTec AD 2's evaluation-server layout: inference/submission.py)."""
    submission_files.check_submission(submission, threshold)
    root = Path(input_path).expanduser()
    output = Path(output).expanduser()
    _check_output_outside_input(output, root)
    skipped: list[Path] = []
    images = find_images(root, skipped)
    if skipped:
        shown = ", ".join(str(p.relative_to(root)) for p in skipped[:10])
        more = f" and {len(skipped) - 10} more" if len(skipped) > 10 else ""
        log.warning("skipped %d file(s) that are not images (%s): %s%s", len(skipped), ", ".join(IMAGE_EXTENSIONS),
                    shown, more)  # fmt: skip
    rows = [PredictionRow(str(p), overlay=_overlay_name(p, root)) for p in images]
    extra = submission_files.planned(images) if submission else []
    _check_output(output, ["scores.csv", "report.html", *(r.overlay for r in rows), *extra], overwrite)
    for row in rows:
        (output / row.overlay).parent.mkdir(parents=True, exist_ok=True)
    size = (image_size, image_size)
    method.eval()
    views = method.input_views()

    def batches() -> Iterator[tuple[list[int], torch.Tensor, dict[str, torch.Tensor]]]:
        """(row indices, images, views) of the readable images, `batch_size` at a time; unreadable ones noted."""
        for start in range(0, len(rows), batch_size):
            tensors, rendered, ok = [], [], []
            for i in range(start, min(start + batch_size, len(rows))):
                try:
                    tensor, extra = to_model_input(load_image(images[i]), size, normalization, views)
                except ImageReadError as err:
                    rows[i].error, rows[i].overlay = str(err), ""
                    continue
                tensors.append(tensor)
                rendered.append(extra)
                ok.append(i)
            if ok:
                stacked = {k: torch.stack([r[k] for r in rendered]).to(method.device) for k in views}
                yield ok, torch.stack(tensors).to(method.device), stacked

    def as_batches() -> Iterator[Batch]:
        for ok, tensors, _ in batches():
            yield cast(Batch, {"image": tensors, "category": [category or ""] * len(ok),
                               "path": [str(images[i]) for i in ok]})  # fmt: skip

    notes = []
    if note := method.prepare_prediction(as_batches):  # e.g. a scale computed over all the images scored here
        log.warning("%s", note)
        notes.append(note)
    maps_by_row: dict[int, np.ndarray] = {}
    for ok, tensors, batch_views in tqdm(batches(), total=-(-len(rows) // batch_size), desc="predicting",
                                         unit="batch"):  # fmt: skip
        paths = [str(images[i]) for i in ok]
        out = method.score_batch(tensors, [category or ""] * len(ok), paths, batch_views or None)
        used = out.get("categories") or [category or ""] * len(ok)
        for j, i in enumerate(ok):
            rows[i].score = float(out["pred_scores"][j])
            rows[i].category = used[j]
            maps_by_row[i] = out["anomaly_maps"][j].float().cpu().numpy()
    # One colour scale for the whole run, so overlays compare across images.
    if maps_by_row:
        vmin = float(min(m.min() for m in maps_by_row.values()))
        vmax = float(max(m.max() for m in maps_by_row.values()))
        for i, amap in tqdm(maps_by_row.items(), desc="writing overlays", unit="image"):
            row = rows[i]
            if threshold is not None:
                row.decision = "anomalous" if row.score > threshold else "normal"
            save_overlay(row.path, amap, output / row.overlay, score=row.score, vmin=vmin, vmax=vmax,
                         title=Path(row.path).name)  # fmt: skip
            if submission:
                assert threshold is not None  # check_submission
                submission_files.write(output, Path(row.path), amap, threshold)
    _write_csv(output / "scores.csv", rows)
    write_report(output / "report.html", rows, threshold, threshold_source, notes)
    failed = sum(1 for r in rows if r.error)
    log.info("%d images scored, %d unreadable; results in %s", len(rows) - failed, failed, output)
    return rows


def _write_csv(path: Path, rows: list[PredictionRow]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "category", "score", "decision", "overlay", "error"])
        for r in rows:
            writer.writerow([r.path, r.category, "" if r.score is None else f"{r.score:.6g}", r.decision, r.overlay,
                             r.error])  # fmt: skip
