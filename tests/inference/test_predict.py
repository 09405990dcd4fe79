"""`anomaly_zoo.predict` on a folder: CSV, overlays, an HTML report checked in a real headless browser."""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from omegaconf import open_dict
from PIL import Image

from anomaly_zoo.runner import predict, run

FAST = ["dataset.categories=[logo,brick]", "dataset.image_size=128", "method.bank_size=256", "dataset.val_ratio=0.2"]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def trained_checkpoint(synthetic_root, tmp_path_factory):
    from hydra import compose, initialize_config_dir

    from tests.conftest import CONF_DIR

    out = tmp_path_factory.mktemp("fit")
    overrides = [f"dataset.root={synthetic_root}", "dataset.num_workers=0", "trainer.enable_progress_bar=false",
                 "eval.heatmaps_per_category=0", *FAST]  # fmt: skip
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
    run(cfg, fit=True)
    return out / "checkpoints" / "last.ckpt"


@pytest.fixture
def image_folder(synthetic_root, tmp_path):
    folder = tmp_path / "incoming"
    (folder / "line2").mkdir(parents=True)
    for i, src in enumerate(sorted((synthetic_root / "logo" / "test" / "good").glob("*.png"))[:3]):
        shutil.copy(src, folder / f"good_{i}.png")
    for i, src in enumerate(sorted((synthetic_root / "logo" / "test" / "stain").glob("*.png"))[:2]):
        Image.open(src).convert("RGB").save(folder / "line2" / f"stain_{i}.jpg", quality=95)
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    (folder / "notes.txt").write_text("not an image")
    return folder


def _predict(compose_cfg, ckpt, folder, output, *extra):
    cfg = compose_cfg("predict", [*FAST, f"ckpt_path={ckpt}", f"input={folder}", f"output={output}", *extra])
    return predict(cfg)


def test_folder_prediction_writes_csv_overlays_and_report(compose_cfg, trained_checkpoint, image_folder, tmp_path):
    out = tmp_path / "out"
    rows = _predict(compose_cfg, trained_checkpoint, image_folder, out)
    with (out / "scores.csv").open() as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows) == 6  # 5 images + 1 unreadable; notes.txt ignored
    broken = [r for r in table if r["path"].endswith("broken.png")]
    assert len(broken) == 1 and "cannot read image" in broken[0]["error"] and broken[0]["score"] == ""
    scored = [r for r in table if not r["error"]]
    assert {Path(r["path"]).suffix for r in scored} == {".png", ".jpg"}  # recursive, several formats
    threshold_rows = [r for r in scored if r["decision"]]
    assert len(threshold_rows) == 5, "the checkpoint records a threshold (dataset.val_ratio > 0)"
    report = (out / "report.html").read_text()
    match = re.search(r"Threshold ([0-9.e+-]+)", report)
    assert match, "the report states the threshold"
    threshold = float(match.group(1))
    for r in scored:
        assert r["decision"] == ("anomalous" if float(r["score"]) > threshold else "normal")
    pngs = sorted(out.rglob("overlays/**/*.png"))
    assert len(pngs) == 5
    sizes = {Image.open(p).size for p in pngs}
    assert sizes == {(int(3.2 * 3 * 80), int(3.4 * 80))}  # input | heatmap | overlay panels
    for p in pngs:
        assert f"src='{p.relative_to(out).as_posix()}'" in report
    # Sorted by score, most anomalous first.
    shown = [float(s) for s in re.findall(r"score ([0-9.e+-]+)", report)[: len(scored)]]
    assert shown == sorted(shown, reverse=True)


def test_existing_outputs_are_never_overwritten_without_permission(
    compose_cfg, trained_checkpoint, image_folder, tmp_path
):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    _predict(compose_cfg, trained_checkpoint, image_folder, out)
    before = (out / "scores.csv").read_text()
    with pytest.raises(FileExistsError, match="overwrite=true"):
        _predict(compose_cfg, trained_checkpoint, image_folder, out)
    _predict(compose_cfg, trained_checkpoint, image_folder, out, "overwrite=true", "threshold=-1")
    assert (out / "mine.txt").read_text() == "keep"
    after = list(csv.DictReader((out / "scores.csv").open()))
    assert before != (out / "scores.csv").read_text()
    assert {r["decision"] for r in after if not r["error"]} == {"anomalous"}  # the command-line threshold wins


def test_bad_input_paths(compose_cfg, trained_checkpoint, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        _predict(compose_cfg, trained_checkpoint, tmp_path / "nowhere", tmp_path / "o1")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no images \(.jpg"):
        _predict(compose_cfg, trained_checkpoint, tmp_path / "empty", tmp_path / "o2")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (.ci/run installs it)")
def test_report_renders_in_headless_chromium(compose_cfg, trained_checkpoint, image_folder, tmp_path):
    out = tmp_path / "out"
    _predict(compose_cfg, trained_checkpoint, image_folder, out)
    proc = subprocess.run(
        [
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--enable-logging=stderr",
            "--dump-dom", (out / "report.html").as_uri(),
        ],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'data-images-loaded="5/5"' in proc.stdout, proc.stdout[-1500:]
    assert "Uncaught" not in proc.stderr


def test_training_free_method_needs_no_checkpoint(compose_cfg, image_folder, tmp_path):
    cfg = compose_cfg(
        "predict",
        ["~method", "+method._target_=tests.helpers.pixel_method.PixelDeviation", "+method.name=pixel",
         "dataset.image_size=64", f"input={image_folder}", f"output={tmp_path / 'out'}", "threshold=0.2"],
    )  # fmt: skip
    rows = predict(cfg)
    scored = [r for r in rows if not r.error]
    assert len(scored) == 5 and all(r.decision == ("anomalous" if r.score > 0.2 else "normal") for r in scored)


def test_a_folder_gets_the_same_input_views_as_the_dataset(synthetic_root, tmp_path):
    """anomaly_zoo.predict renders a method's input views (DIVAD: SD and DINO inputs from the original file) from the
    same decode as the dataset does, so a method sees identical inputs in test and in predict."""
    import torch

    from anomaly_zoo.data import AnomalyDataModule
    from anomaly_zoo.data.views import ImageView
    from anomaly_zoo.inference import predict_folder
    from anomaly_zoo.methods.base import AnomalyMethod

    class ViewRecorder(AnomalyMethod):
        requires_training = False

        def __init__(self) -> None:
            super().__init__()
            self.seen: dict[str, dict[str, torch.Tensor]] = {}

        def input_views(self):
            return {"sd": ImageView(72, "bicubic"), "dino": ImageView(40, "bilinear")}

        def predict_batch(self, images, categories, paths=None, views=None):
            for path, i in zip(paths, range(len(paths)), strict=True):
                self.seen[Path(path).name] = {k: v[i] for k, v in views.items()}
            maps = images.mean(dim=1)
            return {"anomaly_maps": maps, "pred_scores": maps.flatten(1).amax(dim=1)}

    method = ViewRecorder()
    dm = AnomalyDataModule("synthetic", str(synthetic_root), categories=["logo"], image_size=32, num_workers=0)
    dm.use_train_split, dm.views = False, method.input_views()
    dm.setup()
    folder = tmp_path / "incoming"
    folder.mkdir()
    items = [dm.test_dataset[i] for i in range(3)]
    for i, item in enumerate(items):
        shutil.copy(item["path"], folder / f"img_{i}.png")
    predict_folder(method, folder, tmp_path / "out", 32, None, "none", batch_size=2)
    for i, item in enumerate(items):
        for name in ("sd", "dino"):
            assert torch.equal(method.seen[f"img_{i}.png"][name], item["views"][name]), name


def test_mvtec_ad2_private_split_in_the_evaluation_servers_layout(compose_cfg, tmp_path):
    """submission=mvtec_ad2: per image of <root>/<object>/test_private, a float16 TIFF map at the image's size and a
    0/255 PNG of it above the threshold, under anomaly_images[_thresholded]/<object>/test_private/."""
    import numpy as np
    import tifffile

    split = tmp_path / "MVTec_AD_2" / "vial" / "test_private"
    split.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("000_regular.png", "001_regular.png"):
        Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(split / name)
    out = tmp_path / "out"
    overrides = ["~method", "+method._target_=tests.helpers.pixel_method.PixelDeviation", "+method.name=pixel",
                 "dataset.image_size=32", f"input={split}", f"output={out}", "submission=mvtec_ad2"]  # fmt: skip
    with pytest.raises(ValueError, match=r"submission=mvtec_ad2 writes thresholded maps: pass threshold="):
        predict(compose_cfg("predict", overrides))
    predict(compose_cfg("predict", [*overrides, "threshold=0.3"]))
    for name in ("000_regular", "001_regular"):
        amap = tifffile.imread(out / "anomaly_images" / "vial" / "test_private" / f"{name}.tiff")
        binary = np.asarray(Image.open(out / "anomaly_images_thresholded" / "vial" / "test_private" / f"{name}.png"))
        assert amap.dtype == np.float16 and amap.shape == binary.shape == (30, 40) and binary.dtype == np.uint8
        assert np.array_equal(binary, np.where(amap.astype(np.float32) > 0.3, 255, 0)) and 0 < binary.mean() < 255
