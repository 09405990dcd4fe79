"""Faults and bad inputs a user meets: each gives a message naming the culprit, and no user file changes.

Every case hashes the files the user made (datasets, run folders, images) before and after and asserts they are
byte-identical, so a refusal never leaves a half-written or replaced file behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import open_dict
from PIL import Image

from anomaly_zoo.checkpoints.read import read_checkpoint
from anomaly_zoo.config_keys import config_key, differing_keys, is_result_neutral
from anomaly_zoo.data.image_dataset import AnomalyImageDataset, load_image
from anomaly_zoo.data.samples import Sample, index_folder
from anomaly_zoo.errors import one_line
from anomaly_zoo.inference.folder_predictor import predict_folder
from anomaly_zoo.reporting.leaderboard import RunRecord
from anomaly_zoo.reporting.leaderboard_formats import metric_table
from anomaly_zoo.reporting.rows import Row
from anomaly_zoo.run_folder import RunFolderError
from anomaly_zoo.runner import run, run_job
from anomaly_zoo.validation import ConfigError, DataValidationError, check_split, validate_config
from tests.helpers.cli import OFFLINE_ENV, ROOT, run_module
from tests.helpers.pixel_method import PixelDeviation

PIXEL = ["~method", "+method._target_=tests.helpers.pixel_method.PixelDeviation", "+method.name=pixel_deviation"]
QUICK = ["dataset.categories=[coin]", "dataset.image_size=64", "eval.heatmaps_per_category=0"]


def tree_hash(*folders: Path) -> dict[str, str]:
    """sha1 of every file below the folders (path → digest)."""
    out = {}
    for folder in folders:
        for p in sorted(Path(folder).rglob("*")):
            if p.is_file():
                out[str(p)] = hashlib.sha1(p.read_bytes()).hexdigest()
    return out


# ---------------------------------------------------------------- images as they are
def _png16(path: Path, array: np.ndarray) -> None:
    """A 16-bit PNG written by hand (Pillow cannot write 16-bit RGB): grey (H, W) or RGB(A) (H, W, C)."""
    h, w = array.shape[:2]
    colour = {2: 0, 3: 2, 4: 6}[array.ndim if array.ndim == 2 else array.shape[2]]
    raw = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 16, colour, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )


RNG = np.random.default_rng(0)
GREY16 = RNG.integers(0, 65536, (12, 10)).astype(np.uint16)
RGB16 = RNG.integers(0, 65536, (12, 10, 3)).astype(np.uint16)
RGB8 = RNG.integers(0, 256, (12, 10, 3)).astype(np.uint8)


def _kinds(folder: Path) -> dict[str, tuple[Path, np.ndarray, float]]:
    """file kind → (file, expected (H, W, 3) in [0, 1], tolerance)."""
    import tifffile

    grey16 = np.repeat((GREY16 / 65535.0)[..., None], 3, axis=-1)
    kinds = {}
    Image.fromarray(RGB8[..., 0]).save(folder / "grey8.png")
    kinds["grey8"] = (folder / "grey8.png", np.repeat(RGB8[..., :1] / 255.0, 3, axis=-1), 1e-6)
    Image.fromarray(GREY16).save(folder / "grey16.png")  # Pillow writes "I;16" as a 16-bit PNG
    kinds["grey16_png"] = (folder / "grey16.png", grey16, 1e-6)
    _png16(folder / "grey16_raw.png", GREY16)
    kinds["grey16_png_raw"] = (folder / "grey16_raw.png", grey16, 1e-6)
    tifffile.imwrite(folder / "grey16.tif", GREY16)
    kinds["grey16_tiff"] = (folder / "grey16.tif", grey16, 1e-6)
    Image.fromarray(RGB8).save(folder / "rgb8.png")
    kinds["rgb8"] = (folder / "rgb8.png", RGB8 / 255.0, 1e-6)
    rgba = np.concatenate([RGB8, np.full((12, 10, 1), 7, np.uint8)], axis=-1)
    Image.fromarray(rgba, "RGBA").save(folder / "rgba.png")
    kinds["rgba"] = (folder / "rgba.png", RGB8 / 255.0, 1e-6)  # alpha dropped, colour untouched
    palette_image = Image.fromarray((RGB8[..., 0] % 4).astype(np.uint8), "P")
    palette = [0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255]
    palette_image.putpalette(palette)
    palette_image.save(folder / "palette.png")
    colours = np.array(palette, dtype=float).reshape(4, 3) / 255.0
    kinds["palette"] = (folder / "palette.png", colours[RGB8[..., 0] % 4], 1e-6)
    # 16-bit colour at full depth (Pillow alone would keep only the high byte: an error up to 1/255)
    _png16(folder / "rgb16.png", RGB16)
    kinds["rgb16_png"] = (folder / "rgb16.png", RGB16 / 65535.0, 1e-6)
    tifffile.imwrite(folder / "rgb16.tif", RGB16)
    kinds["rgb16_tiff"] = (folder / "rgb16.tif", RGB16 / 65535.0, 1e-6)
    rgba16 = np.concatenate([RGB16, np.full((*RGB16.shape[:2], 1), 65535, np.uint16)], axis=-1)
    _png16(folder / "rgba16.png", rgba16)
    kinds["rgba16_png"] = (folder / "rgba16.png", RGB16 / 65535.0, 1e-6)
    tifffile.imwrite(folder / "rgba16.tif", rgba16)
    kinds["rgba16_tiff"] = (folder / "rgba16.tif", RGB16 / 65535.0, 1e-6)
    return kinds


def test_every_bit_depth_and_colour_mode_is_read_at_its_scale(tmp_path):
    for kind, (path, expected, tol) in _kinds(tmp_path).items():
        image = load_image(path)
        assert image.shape == (3, 12, 10) and image.dtype == torch.float32, kind
        np.testing.assert_allclose(image.permute(1, 2, 0).numpy(), expected, atol=tol, err_msg=kind)


def test_the_datamodule_and_predict_read_16_bit_images_as_they_are(tmp_path):
    """A 16-bit grey image of mid-grey values is not all white anywhere it is read (the old bug: 1.0 everywhere)."""
    mid = np.full((12, 10), 30000, np.uint16)
    Image.fromarray(mid).save(tmp_path / "mid16.png")
    item = AnomalyImageDataset([Sample(str(tmp_path / "mid16.png"), None, 0, "c")], 12)[0]
    assert torch.allclose(item["image"], torch.full_like(item["image"], 30000 / 65535), atol=1e-5)
    rows = predict_folder(
        PixelDeviation(reference=0.0), tmp_path, tmp_path.parent / f"{tmp_path.name}_out", 12, None, "test"
    )
    assert rows[0].score == pytest.approx(30000 / 65535, abs=1e-5)  # PixelDeviation(0): the image's own value


def _with_orientation(path: Path, upright: np.ndarray, orientation: int, **save: object) -> None:
    """Store `upright` (H, W[, 3]) as a camera would: the pixels as the sensor read them plus the EXIF Orientation
    tag that turns them back upright (Pillow's exif_transpose undoes exactly that storage)."""
    undo = {1: None, 2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
            4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90,
            7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_270}[orientation]  # fmt: skip
    image = Image.fromarray(upright)
    stored = image if undo is None else image.transpose(undo)
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(path, exif=exif, **save)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_exif_orientation_is_applied_as_viewers_show_the_image(tmp_path, suffix):
    from PIL import ImageOps

    upright = RNG.integers(0, 256, (12, 20, 3)).astype(np.uint8)  # not square: a turn changes the shape
    for orientation in range(1, 9):
        path = tmp_path / f"o{orientation}{suffix}"
        _with_orientation(path, upright, orientation, quality=100)
        with Image.open(path) as img:
            shown = np.asarray(ImageOps.exif_transpose(img).convert("RGB"), dtype=np.float32) / 255.0  # a viewer
        got = load_image(path).permute(1, 2, 0).numpy()
        assert got.shape == (12, 20, 3), orientation
        np.testing.assert_array_equal(got, shown, err_msg=f"orientation {orientation}")
        if suffix == ".png":  # lossless: exactly the upright pixels
            np.testing.assert_array_equal(got, upright / np.float32(255.0), err_msg=f"orientation {orientation}")


def test_a_sideways_image_and_mask_line_up_in_the_dataset_views_and_predict(tmp_path):
    """A phone's JPEG (Orientation=6) and a mask drawn on the upright image: same size check, aligned pixels, the
    method's input views and predict's scores as for the upright file."""
    from anomaly_zoo.data.views import ImageView

    upright = np.full((24, 40, 3), 40, np.uint8)
    upright[4:10, 28:36] = 220  # the defect, top right as shown
    mask = np.zeros((24, 40), np.uint8)
    mask[4:10, 28:36] = 255
    (tmp_path / "in").mkdir()
    Image.fromarray(upright).save(tmp_path / "in" / "upright.png")
    _with_orientation(tmp_path / "in" / "sideways.png", upright, 6)
    _with_orientation(tmp_path / "sideways.jpg", upright, 6, quality=100)
    Image.fromarray(mask).save(tmp_path / "mask.png")
    _with_orientation(tmp_path / "mask_sideways.png", mask, 8)  # a mask may carry its own orientation too
    assert Image.open(tmp_path / "sideways.jpg").size == (24, 40)  # stored sideways
    samples = [Sample(str(tmp_path / name), str(tmp_path / m), 1, "c")
               for name in ("in/upright.png", "in/sideways.png", "sideways.jpg")
               for m in ("mask.png", "mask_sideways.png")]  # fmt: skip
    check_split(samples, require_masks=True)  # sizes compared as shown: 40x24 each
    views = {"big": ImageView(48, "bicubic")}
    items = [AnomalyImageDataset(samples, [24, 40], views=views)[i] for i in range(len(samples))]
    for item in items:
        assert torch.equal(item["mask"], items[0]["mask"])
        inside = item["image"][:, item["mask"] > 0]
        assert inside.min() > 0.8 and item["image"][:, item["mask"] == 0].max() < 0.25  # the defect under its mask
    for item in items[:4]:  # lossless files: the very pixels and views of the upright file
        assert torch.equal(item["image"], items[0]["image"])
        assert torch.equal(item["views"]["big"], items[0]["views"]["big"])
    rows = predict_folder(PixelDeviation(reference=0.0), tmp_path / "in", tmp_path / "out", 24, None, "test")
    assert [Path(r.path).name for r in rows] == ["sideways.png", "upright.png"] and rows[0].score == rows[1].score


def test_images_a_layout_would_leave_out_are_refused_by_name_and_the_project_message_is_shown(synthetic_root, tmp_path):
    import shutil

    root = tmp_path / "synthetic"
    shutil.copytree(synthetic_root / "coin", root / "coin")
    for marker in synthetic_root.glob("*.json"):  # the generator's version record: no regeneration
        shutil.copy(marker, root / marker.name)
    good = root / "coin" / "test" / "good"
    Image.open(good / "000.png").save(good / "000.jpg", quality=95)
    (good / "000.png").unlink()
    before = tree_hash(root)
    proc = run_module("anomaly_zoo.test", *PIXEL, *QUICK, f"dataset.root={root}", f"hydra.run.dir={tmp_path}/r",
                      expect=1)  # fmt: skip
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "DatasetLayoutError: dataset=synthetic indexes only .png/.PNG" in errors[0]
    assert "test/good/000.jpg" in errors[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "r" / "results.json").exists() and tree_hash(root) == before
    # a defect image: anomalib's own failure would be a pandas length error naming no file
    shutil.move(good / "000.jpg", good / "000.png")
    defect = next(p for p in sorted((root / "coin" / "test").rglob("*.png")) if p.parent.name != "good")
    Image.open(defect).save(defect.with_suffix(".jpeg"))
    defect.unlink()
    from anomaly_zoo.data.registry import get_dataset_info
    from anomaly_zoo.data.samples import DatasetLayoutError, index_category

    with pytest.raises(DatasetLayoutError, match=f"{defect.parent.name}/{defect.stem}.jpeg"):
        index_category(get_dataset_info("synthetic"), root, "coin", "test")


# ---------------------------------------------------------------- validate before work
@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("dataset.image_size=abc", "dataset.image_size='abc': must be an integer >= 32"),
        ("dataset.image_size=0", "dataset.image_size=0: must be"),
        ("dataset.image_size=-64", "dataset.image_size=-64: must be"),
        ("dataset.image_size=16", "dataset.image_size=16: must be an integer >= 32"),
        ("dataset.train_batch_size=0", "dataset.train_batch_size=0: must be an integer >= 1"),
        ("dataset.eval_batch_size=-4", "dataset.eval_batch_size=-4: must be an integer >= 1"),
        ("dataset.num_workers=-1", "dataset.num_workers=-1: must be an integer >= 0"),
        ("dataset.val_ratio=1.5", "dataset.val_ratio=1.5: must be in [0, 1)"),
        (f"trainer.devices={(os.cpu_count() or 1) + 6}", "CPU cores here"),
        ("checkpoint.every_n_epochs=0", "checkpoint.every_n_epochs=0: must be an integer >= 1"),
        ("eval.threshold_false_alarm_rate=2", "eval.threshold_false_alarm_rate=2: must be in [0, 1)"),
        ("ckpt_path=/no/such.ckpt", "ckpt_path='/no/such.ckpt': no such checkpoint file"),
        ("dataset=mvtec dataset.root=/no/such/folder", "dataset.root='/no/such/folder': no such folder"),
    ],
)
def test_bad_config_values_are_named_with_their_allowed_range(compose_cfg, override, named):
    cfg = compose_cfg("train", override.split())
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    assert named in str(err.value) and len(str(err.value).splitlines()) == 1


def test_all_bad_values_are_listed_at_once_and_wandb_without_login_says_how_to_run_offline(
    compose_cfg, monkeypatch, tmp_path
):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    cfg = compose_cfg("train", ["dataset.train_batch_size=0", "dataset.eval_batch_size=0", "logger=wandb"])
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    lines = str(err.value).splitlines()
    assert len(lines) == 3 and "WANDB_MODE=offline" in lines[2]


def test_every_missing_pretrained_model_is_named_at_once(compose_cfg, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    cfg = compose_cfg("test", ["method=divad", "backbone=sd15"])
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    text = str(err.value)
    assert "2 pretrained model(s) missing" in text  # DIVAD's DINO and its Stable Diffusion, in one message
    assert "method.feature_extractor: timm/vit_small_patch8_224.dino" in text
    assert "method.diffusion: stable-diffusion-v1-5/stable-diffusion-v1-5" in text  # the key that holds it


def _folder_dataset(root: Path, synthetic_root: Path) -> Path:
    """A folder dataset with one of each data fault: a corrupt test image, a wrong-size mask, a missing mask."""
    src = synthetic_root / "coin"
    (root / "good").mkdir(parents=True)
    (root / "defect").mkdir()
    (root / "mask").mkdir()
    for p in sorted((src / "train" / "good").glob("*.png"))[:6]:
        Image.open(p).save(root / "good" / p.name)
    defects = sorted(p for p in (src / "test").rglob("*.png") if p.parent.name != "good")[:3]
    for i, p in enumerate(defects):
        Image.open(p).save(root / "defect" / f"d{i}.png")
        mask = Image.open(src / "ground_truth" / p.parent.name / f"{p.stem}_mask.png")
        mask.save(root / "mask" / f"d{i}.png")
    Image.open(root / "mask" / "d1.png").resize((17, 17)).save(root / "mask" / "d1.png")  # wrong size
    (root / "defect" / "d2.png").write_bytes((root / "defect" / "d2.png").read_bytes()[:200])  # truncated
    return root


def test_the_whole_test_split_is_checked_before_fitting_and_every_bad_file_named(compose_cfg, synthetic_root, tmp_path):
    root = _folder_dataset(tmp_path / "mine", synthetic_root)
    (root / "defect" / "d3.png").write_bytes((root / "defect" / "d0.png").read_bytes())  # no mask for this one
    before = tree_hash(root)
    cfg = compose_cfg("train", ["dataset=folder", f"dataset.root={root}", "dataset.mask_dir=mask",
                                "dataset.image_size=64", "method.bank_size=64"])  # fmt: skip
    samples = [Sample(str(p), str(root / "mask" / p.name) if (root / "mask" / p.name).exists() else None, 1, "f")
               for p in sorted((root / "defect").glob("*.png"))]  # fmt: skip
    with pytest.raises(DataValidationError) as err:
        check_split(samples, require_masks=True)
    text = str(err.value)
    assert "3 problem(s)" in text and "d1.png: mask is 17x17" in text and "d2.png: unreadable" in text
    assert "d3.png: defective image without a mask" in text and "require_masks=false" in text
    check_split([s for s in samples if s.mask_path is None], require_masks=False)  # allowed when asked
    with pytest.raises(Exception, match=r"d1\.png"):  # through the run: before any checkpoint or result
        run(cfg, fit=True)
    assert not (tmp_path / "run").exists(), "refused before anything was written"
    assert tree_hash(root) == before


# ---------------------------------------------------------------- nothing overwritten
def test_one_definition_of_keys_that_do_not_change_results():
    from anomaly_zoo.reporting import leaderboard

    base = {"task_name": "train", "method": {"bank_size": 64}, "trainer": {"enable_progress_bar": True}}
    toggled = {**base, "trainer": {"enable_progress_bar": False}, "checkpoint": {"every_n_epochs": 5}}
    assert config_key(base) == config_key(toggled)  # a progress-bar toggle is the same run
    assert config_key(base) != config_key({**base, "method": {"bank_size": 128}})
    assert config_key(base) == config_key({**base, "ckpt_path": "last"})  # resuming a training run: same run
    assert not is_result_neutral("ckpt_path", "test")  # evaluating another checkpoint: another run
    assert leaderboard.is_result_neutral is is_result_neutral  # the leaderboard uses the same rule
    assert differing_keys(base, {**base, "method": {"bank_size": 128}}) == ["method.bank_size: 64 → 128"]


def test_a_run_folder_of_another_config_is_refused_and_left_as_it_was(compose_cfg, tmp_path):
    first = compose_cfg("test", [*PIXEL, *QUICK, "+method.reference=0.3"])
    run(first, fit=False)
    folder = Path(first.paths.output_dir)
    before = tree_hash(folder)
    other = compose_cfg("test", [*PIXEL, *QUICK, "+method.reference=0.7"])
    with pytest.raises(RunFolderError) as err:
        run_job(other, fit=False)
    assert "method.reference: 0.3 → 0.7" in str(err.value) and str(folder) in str(err.value)
    assert tree_hash(folder) == before
    # the same config (a progress-bar toggle aside) is recognised as finished and skipped
    same = compose_cfg("test", [*PIXEL, *QUICK, "+method.reference=0.3", "trainer.enable_progress_bar=true"])
    skipped = run_job(same, fit=False)  # a skipped run returns where its results are (and no new results)
    assert skipped == {"results_path": str(folder / "results.json"), "objective": None} and tree_hash(folder) == before


def test_existing_folder_version_puts_another_config_in_a_new_version_folder(compose_cfg, tmp_path):
    first = compose_cfg("test", [*PIXEL, *QUICK, "+method.reference=0.3"])
    run(first, fit=False)
    folder = Path(first.paths.output_dir)
    before = tree_hash(folder)
    second = compose_cfg("test", [*PIXEL, *QUICK, "+method.reference=0.7", "existing_folder=version"])
    run_job(second, fit=False)
    v1 = json.loads((folder / "version_1" / "results.json").read_text())
    assert v1["config"]["method"]["reference"] == 0.7 and v1["status"] == "ok"
    untouched = {k: v for k, v in tree_hash(folder).items() if not k.startswith(str(folder / "version_"))}
    assert untouched == before  # the first run's files are as they were
    # the same command again finds its finished run in version_1 (skipped); a third config gets version_2
    again = compose_cfg("test", [*PIXEL, *QUICK, "+method.reference=0.7", "existing_folder=version"])
    skipped = run_job(again, fit=False)
    assert skipped["results_path"] == str(folder / "version_1" / "results.json") and not (folder / "version_2").exists()
    third = compose_cfg("test", [*PIXEL, *QUICK, "+method.reference=0.5", "existing_folder=version"])
    run_job(third, fit=False)
    assert json.loads((folder / "version_2" / "results.json").read_text())["config"]["method"]["reference"] == 0.5


def test_a_non_ascii_dataset_and_run_folder_give_the_same_results(compose_cfg, synthetic_root, tmp_path):
    import shutil

    plain = compose_cfg("test", [*PIXEL, *QUICK, "+method.reference=0.3"])
    expected = run(plain, fit=False)
    root = tmp_path / "données 検査" / "synthetic"
    shutil.copytree(synthetic_root / "coin", root / "coin")
    for marker in synthetic_root.glob("*.json"):  # the generator's version record: no regeneration
        shutil.copy(marker, root / marker.name)
    cfg = compose_cfg("test", [*PIXEL, *QUICK, "+method.reference=0.3", f"dataset.root='{root}'"])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "résultats ü")
    got = run(cfg, fit=False)
    assert got["mean"] == expected["mean"] and got["per_category"] == expected["per_category"]
    assert json.loads((tmp_path / "résultats ü" / "results.json").read_text(encoding="utf-8"))["status"] == "ok"
    # a folder dataset there too (anomalib's Folder refuses non-ASCII paths by itself)
    mine = tmp_path / "données 検査" / "mine"
    for sub, src in (("good", root / "coin" / "train" / "good"), ("défaut", root / "coin" / "test" / "scratch")):
        (mine / sub).mkdir(parents=True)
        for p in sorted(src.glob("*.png"))[:2]:
            shutil.copy(p, mine / sub / p.name)
    samples = index_folder(mine, "mine", "test", "good", "défaut", None, None, None)
    assert sorted(Path(s.image_path).parent.name for s in samples) == ["défaut", "défaut"]
    assert all(Path(s.image_path).is_file() and str(mine) in s.image_path for s in samples)


def _user_files(folder: Path) -> dict[str, str]:
    """tree_hash without Hydra's job log, which every start appends to (appending loses nothing)."""
    return {k: v for k, v in tree_hash(folder).items() if not k.endswith(".log")}


@pytest.mark.slow
def test_hydra_record_of_a_run_survives_a_refused_run_and_a_failed_sweep_job(synthetic_root, tmp_path):
    """Hydra writes `.hydra/` before the task starts; the runner now writes it after claiming the folder, so neither
    a refused run nor a sweep job that fails on a bad value replaces the record (or results) already there."""
    common = [*PIXEL, *QUICK, f"dataset.root={synthetic_root}", "trainer.enable_progress_bar=false"]
    run_module("anomaly_zoo.test", *common, "+method.reference=0.3", f"hydra.run.dir={tmp_path}/r")
    folder = tmp_path / "r"
    assert "+method.reference=0.3" in (folder / ".hydra" / "overrides.yaml").read_text()
    before, log = _user_files(folder), (folder / "test.log").read_text()
    refused = run_module("anomaly_zoo.test", *common, "+method.reference=0.7", f"hydra.run.dir={folder}", expect=1)
    assert "method.reference: 0.3 → 0.7" in refused.stderr
    assert _user_files(folder) == before and (folder / "test.log").read_text().startswith(log)
    # a sweep: job 0 finishes, then the same sweep folder is reused with a value that fails validation
    sweep = tmp_path / "s"
    run_module("anomaly_zoo.test", "-m", *common, "+method.reference=0.3", f"hydra.sweep.dir={sweep}")
    before = _user_files(sweep / "0")
    failed = run_module("anomaly_zoo.test", "-m", *common, "+method.reference=0.7", "dataset.eval_batch_size=-4",
                        f"hydra.sweep.dir={sweep}", expect=1)  # fmt: skip
    assert "dataset.eval_batch_size=-4" in failed.stderr + failed.stdout
    assert _user_files(sweep / "0") == before
    # predict keeps its command's record in its own Hydra folder too
    images = synthetic_root / "coin" / "test" / "scratch"
    run_module("anomaly_zoo.predict", *PIXEL, "+method.reference=0.3", f"input={images}", f"output={tmp_path}/out",
               f"hydra.run.dir={tmp_path}/p")  # fmt: skip
    assert f"input={images}" in (tmp_path / "p" / ".hydra" / "overrides.yaml").read_text()


def test_a_run_folder_that_cannot_be_written_is_one_line_naming_the_key(tmp_path):
    """Below a regular file, and on a file system not even root may write (sysfs: the read-only-mount case)."""
    from anomaly_zoo.hydra_callbacks import folder_problem

    blocker = tmp_path / "a_file"
    blocker.write_text("mine")
    cases = [("hydra.run.dir", blocker / "run", f"{blocker} is a file, not a folder")]
    cases.append(("hydra.sweep.dir", blocker / "sweep", f"{blocker} is a file, not a folder"))
    if folder_problem("/sys/anomaly_zoo_run"):  # sysfs refuses new files where the container mounts it
        cases.append(("hydra.run.dir", Path("/sys/anomaly_zoo_run"), "/sys cannot be written ("))
    for key, folder, why in cases:
        multirun = ["-m"] if key == "hydra.sweep.dir" else []
        proc = run_module("anomaly_zoo.train", *multirun, *PIXEL, f"{key}={folder}", expect=1)
        assert proc.stderr.strip().splitlines() == [proc.stderr.strip()], proc.stderr  # one line, no traceback
        assert proc.stderr.startswith(f"error: {key}={folder}: {why}"), proc.stderr
    assert blocker.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


# ---------------------------------------------------------------- checkpoints know what they are
@pytest.fixture(scope="module")
def small_checkpoint(synthetic_root, tmp_path_factory) -> Path:
    from hydra import compose, initialize_config_dir

    from tests.conftest import CONF_DIR

    out = tmp_path_factory.mktemp("small_fit")
    overrides = [f"dataset.root={synthetic_root}", "dataset.num_workers=0", "trainer.enable_progress_bar=false",
                 "trainer.enable_model_summary=false", *QUICK, "method.bank_size=64",
                 "method.sampling=random"]  # fmt: skip
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
    run(cfg, fit=True)
    return out / "checkpoints" / "last.ckpt"


def test_a_checkpoint_records_its_model_and_test_takes_it_from_there(compose_cfg, small_checkpoint, tmp_path):
    meta = read_checkpoint(small_checkpoint)["anomaly_zoo"]
    assert meta["method"] == "patch_knn" and meta["image_size"] == [64, 64]
    assert meta["backbone"]["name"] == "efficientnet_lite0" and meta["method_config"]["bank_size"] == 64
    # nothing restated: the defaults (image_size 256, bank_size 2048) give way to the checkpoint's values
    cfg = compose_cfg("test", ["dataset.categories=[coin]", "eval.heatmaps_per_category=0",
                               f"ckpt_path={small_checkpoint}"])  # fmt: skip
    res = json.loads(Path(run(cfg, fit=False)["results_path"]).read_text())
    trained = json.loads((small_checkpoint.parents[1] / "results.json").read_text())
    # the checkpoint's backbone, its weights from the checkpoint itself (not the source they once came from)
    assert res["eval_size"] == [64, 64] and res["config"]["backbone"] == {
        **meta["backbone"],
        "weights": "checkpoint",
        "weights_path": None,
    }
    assert res["categories"] == trained["categories"]  # the same model on the same images as at training time


@pytest.mark.slow
def test_contradicting_a_checkpoint_or_loading_another_methods_is_one_clear_error(
    synthetic_root, small_checkpoint, tmp_path
):
    common = [f"dataset.root={synthetic_root}", "dataset.categories=[coin]", f"ckpt_path={small_checkpoint}",
              f"hydra.run.dir={tmp_path}/r"]  # fmt: skip
    before = tree_hash(small_checkpoint.parent)
    size = run_module("anomaly_zoo.test", *common, "dataset.image_size=96", expect=1)
    assert "trained at [64, 64], this run asks for [96, 96]" in size.stderr and "Traceback" not in size.stderr
    other = run_module("anomaly_zoo.test", *common, "method=onenip", expect=1)
    assert "written by method=patch_knn" in other.stderr and "method=onenip" in other.stderr
    assert len([line for line in other.stderr.splitlines() if line.startswith("error:")]) == 1
    assert "Traceback" not in other.stderr
    full = run_module("anomaly_zoo.test", *common, "method=onenip", expect=1, HYDRA_FULL_ERROR="1")
    assert "Traceback" in full.stderr  # on request
    assert tree_hash(small_checkpoint.parent) == before


# ---------------------------------------------------------------- predict
def test_predict_keeps_names_apart_refuses_output_inside_input_and_lists_non_images(tmp_path, caplog):
    images = tmp_path / "in"
    (images / "sub").mkdir(parents=True)
    values = {"a.png": 10, "a.jpg": 60, "sub/a.png": 120, "sub__a.png": 200}
    for name, value in values.items():
        Image.fromarray(np.full((16, 16, 3), value, np.uint8)).save(images / name, quality=100)
    (images / "notes.txt").write_text("x")
    before = tree_hash(images)
    with pytest.raises(ValueError, match="inside input"):
        predict_folder(PixelDeviation(reference=0.0), images, images / "out", 16, None, "test")
    with caplog.at_level("WARNING"):
        rows = predict_folder(PixelDeviation(reference=0.0), images, tmp_path / "out", 16, None, "test")
    assert "notes.txt" in caplog.text and "not images" in caplog.text
    overlays = {Path(r.path).relative_to(images).as_posix(): r.overlay for r in rows}
    assert len(set(overlays.values())) == 4 and overlays["sub/a.png"] == "overlays/sub/a.png.png"
    for name, row in zip(overlays, rows, strict=True):  # each row's score is its own image's value
        assert row.score == pytest.approx(values[name] / 255, abs=0.02)
        assert (tmp_path / "out" / row.overlay).is_file()
    assert tree_hash(images) == before


# ---------------------------------------------------------------- failures in tables
def test_failed_cells_carry_the_root_cause_on_one_line(tmp_path):
    try:
        try:
            raise ValueError("cannot read image x.png: truncated")
        except ValueError as inner:
            raise RuntimeError("wrapper") from inner
    except RuntimeError as err:
        assert one_line(err) == "ValueError: cannot read image x.png: truncated"
    worker = ValueError("Caught ImageReadError in DataLoader worker process 0.\nOriginal Traceback (most recent "
                        "call last):\n  File ...\n"
                        "anomaly_zoo.data.image_dataset.ImageReadError: cannot read y.png")  # fmt: skip
    assert one_line(worker) == "ImageReadError: cannot read y.png"
    from anomaly_zoo.data.samples import DatasetLayoutError

    try:  # the project's own message, not the library error it explains
        try:
            raise ValueError("Must have equal len keys and value when setting with an iterable")
        except ValueError as inner:
            raise DatasetLayoutError("cannot index x: a .jpg defect image") from inner
    except DatasetLayoutError as err:
        wrapped = RuntimeError("Error in call to target")
        wrapped.__cause__ = err
        assert one_line(wrapped) == "DatasetLayoutError: cannot index x: a .jpg defect image"
    record = RunRecord(tmp_path, "m", "d", "failed", "line one\nline | two", {}, {}, {}, label="m")
    table = metric_table("t", [Row([record])], None)
    assert table.splitlines()[-1].startswith("| m | failed: line one line / two |")


def test_dataset_root_that_is_a_file_is_named_by_its_key(compose_cfg, tmp_path):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("not a dataset")
    for dataset, root, said in (("synthetic", blocker, "is a file, not a folder"),
                                ("synthetic", blocker / "synthetic", f"is below {blocker}, a file"),
                                ("mvtec", blocker, "is a file, not a folder")):  # fmt: skip
        cfg = compose_cfg("train", [f"dataset={dataset}", f"dataset.root={root}"])
        with pytest.raises(ConfigError) as err:
            validate_config(cfg)
        assert str(err.value) == f"dataset.root='{root}': {said} (set dataset.root=/path/to/{dataset})"
    assert blocker.read_text() == "not a dataset"


def test_the_leaderboard_of_a_sweep_with_corrupt_results_has_the_readable_runs_and_names_the_rest(tmp_path):
    from anomaly_zoo.metrics import METRIC_NAMES

    sweep = tmp_path / "sweep"
    for n, value in ((0, 0.5), (1, 0.75)):
        metrics = dict.fromkeys(METRIC_NAMES, value)
        record = {"method": "m", "dataset": "d", "status": "ok", "config": {"method": {"k": n}},
                  "categories": {"c": metrics}, "mean": metrics}  # fmt: skip
        (sweep / str(n)).mkdir(parents=True)
        (sweep / str(n) / "results.json").write_text(json.dumps(record))
    (sweep / "2").mkdir()
    (sweep / "2" / "results.json").write_text((sweep / "0" / "results.json").read_text()[:40])  # cut short
    (sweep / "3").mkdir()
    (sweep / "3" / "results.json").write_text("[1, 2]")
    before = tree_hash(sweep)
    proc = run_module("anomaly_zoo.leaderboard", str(sweep), f"out={tmp_path}/board")
    table = (tmp_path / "board" / "leaderboard_d.md").read_text()
    assert "| m k=0 | ok |" in table and "| m k=1 | ok | **75.0**" in table and "2 runs" in table
    unreadable = [line for line in proc.stderr.splitlines() if line.startswith("unreadable, left out:")]
    assert len(unreadable) == 2 and "Traceback" not in proc.stderr
    assert f"{sweep / '2' / 'results.json'}: JSONDecodeError:" in unreadable[0]
    assert f"{sweep / '3' / 'results.json'}: ValueError: a JSON list, not a run record" in unreadable[1]
    assert tree_hash(sweep) == before
    (sweep / "0" / "results.json").write_text("{")
    (sweep / "1" / "results.json").write_text("")
    none = run_module("anomaly_zoo.leaderboard", str(sweep), f"out={tmp_path}/board2", expect=1)
    assert "error: no readable results.json found under" in none.stderr and none.stderr.count("unreadable,") == 4


# ---------------------------------------------------------------- killed runs resume to the same result
# A small trainable method (tests/helpers/tiny_trainable.py): the checkpoint and resume machinery is the framework's,
# the same for every method (OneNIP's own resume is checked in tests/methods/onenip/test_training.py).
TINY = [
    "~method", "+method._target_=tests.helpers.tiny_trainable.TinyAutoencoder", "+method.name=tiny",
    "+method.max_epochs=5", "dataset.categories=[coin]", "dataset.image_size=32", "dataset.train_batch_size=4",
    "dataset.num_workers=0", "trainer.limit_train_batches=4", "trainer.deterministic=true",
    "eval.heatmaps_per_category=0", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
]  # fmt: skip


def _train_args(synthetic_root: Path, out: Path, step_seconds: float) -> list[str]:
    return [*TINY, f"+method.step_seconds={step_seconds}", f"dataset.root={synthetic_root}", f"hydra.run.dir={out}"]


#: The default data loading (dataset.num_workers=2, conf/dataset/_common.yaml) instead of TINY's in-process loading.
TINY_WORKERS = [a for a in TINY if a != "dataset.num_workers=0"]


def _kill_after_first_checkpoint(cmd: list[str], out: Path, sig: int) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **OFFLINE_ENV}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    ckpt, deadline = out / "checkpoints" / "last.ckpt", time.monotonic() + 300
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def uninterrupted(synthetic_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted")
    run_module("anomaly_zoo.train", *_train_args(synthetic_root, out, 0.0))  # no need to slow it down
    return out


@pytest.fixture(scope="module")
def uninterrupted_with_workers(synthetic_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted_workers")
    run_module("anomaly_zoo.train", *TINY_WORKERS, f"dataset.root={synthetic_root}", f"hydra.run.dir={out}")
    return out


def _assert_same_run(reference: Path, resumed_dir: Path) -> None:
    """Bit-identical final weights and equal metrics."""
    full = read_checkpoint(reference / "checkpoints" / "last.ckpt")
    resumed = read_checkpoint(resumed_dir / "checkpoints" / "last.ckpt")
    assert resumed["epoch"] == full["epoch"] == 4
    for key, value in full["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key
    results = [json.loads((d / "results.json").read_text()) for d in (reference, resumed_dir)]
    assert results[0]["categories"] == results[1]["categories"]


@pytest.mark.slow
def test_a_run_killed_under_the_default_data_loading_resumes_to_the_same_weights(
    synthetic_root, uninterrupted_with_workers, tmp_path
):
    """Two loader workers, as by default: the training order and the workers' seeds are restored from the
    checkpoint (the datamodule's generator), and loading draws nothing from the global generators."""
    out = tmp_path / "killed"
    args = [*TINY_WORKERS, "+method.step_seconds=0.1", f"dataset.root={synthetic_root}", f"hydra.run.dir={out}"]
    killed = _kill_after_first_checkpoint([sys.executable, "-m", "anomaly_zoo.train", *args], out, signal.SIGKILL)
    assert killed.returncode == -9 and not (out / "results.json").exists()
    assert read_checkpoint(out / "checkpoints" / "last.ckpt")["epoch"] < 4, "killed before the last epoch"
    again = run_module("anomaly_zoo.train", *args)
    assert "resuming an unfinished run of the same config from" in again.stdout
    _assert_same_run(uninterrupted_with_workers, out)  # step_seconds only slows it down


@pytest.mark.slow
def test_testing_a_finished_training_run_in_its_own_folder_keeps_the_results_apart(
    synthetic_root, uninterrupted, tmp_path
):
    import shutil

    run_dir = tmp_path / "trained"
    shutil.copytree(uninterrupted, run_dir)
    before = _user_files(run_dir)
    args = ["ckpt_path=last", f"hydra.run.dir={run_dir}", f"dataset.root={synthetic_root}", "dataset.num_workers=0",
            "dataset.categories=[coin]", "eval.heatmaps_per_category=0",
            "trainer.enable_progress_bar=false"]  # fmt: skip
    proc = run_module("anomaly_zoo.test", *args)
    evaluation = run_dir / "test_last"
    assert f"this evaluation goes to {evaluation}" in proc.stdout
    tested = json.loads((evaluation / "results.json").read_text())
    trained = json.loads((run_dir / "results.json").read_text())
    assert tested["status"] == "ok" and tested["config"]["task_name"] == "test"
    assert tested["config"]["ckpt_path"] == str(run_dir / "checkpoints" / "last.ckpt")
    assert tested["categories"] == trained["categories"]  # the same weights on the same test split
    assert (evaluation / ".hydra" / "overrides.yaml").is_file()
    new = {k for k in _user_files(run_dir) if k not in before}
    assert all(k.startswith(str(evaluation)) for k in new)
    assert {k: v for k, v in _user_files(run_dir).items() if k in before} == before  # the training's, untouched
    again = run_module("anomaly_zoo.test", *args)  # the same command: its finished evaluation is found
    assert "skipping: a finished run with the same config" in again.stdout and _user_files(run_dir).keys() == (
        before.keys() | new
    )


# SIGKILL: the submitit test below kills its run that way
@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM], ids=["SIGTERM"])
def test_a_killed_run_resumes_to_the_same_weights_and_metrics(synthetic_root, uninterrupted, tmp_path, sig):
    out = tmp_path / "killed"
    args = _train_args(synthetic_root, out, 0.1)  # slowed to about 2 s of training: killed mid-run
    killed = _kill_after_first_checkpoint([sys.executable, "-m", "anomaly_zoo.train", *args], out, sig)
    assert killed.returncode == (-9 if sig == signal.SIGKILL else 143), killed.stderr[-2000:]
    assert not (out / "results.json").exists()
    epoch = read_checkpoint(out / "checkpoints" / "last.ckpt")["epoch"]
    assert epoch < 4, "killed before the last epoch"
    if sig == signal.SIGTERM:
        assert "stopped by SIGTERM" in killed.stdout and "Run the same command again to resume" in killed.stdout
    again = run_module("anomaly_zoo.train", *args)  # the same command, once more
    assert "resuming an unfinished run of the same config from" in again.stdout
    _assert_same_run(uninterrupted, out)


@pytest.mark.slow
def test_a_submitit_sweep_with_a_killed_run_resumes_it_when_rerun(synthetic_root, uninterrupted, tmp_path):
    """hydra-submitit-launcher's local executor: the launcher code `hydra/launcher=slurm` uses, minus the scheduler.

    Run 0 is quick, run 1 slow; run 1's job is SIGKILLed after its first checkpoint. Re-running the sweep skips run 0
    and resumes run 1, and both end with results; run 1 ends with the uninterrupted run's weights and metrics.
    """
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "sweep"
    args = ["-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", *TINY,
            "+method.step_seconds=0,0.3", f"dataset.root={synthetic_root}", f"hydra.sweep.dir={sweep}"]  # fmt: skip
    cmd = [sys.executable, "-m", "anomaly_zoo.train", *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **OFFLINE_ENV}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip

    def unfinished_jobs() -> list[Path]:  # submitit's local job id is the job's process id
        jobs = [d for d in (sweep / ".submitit").glob("*") if d.name.isdigit()]
        return [d for d in jobs if not list(d.glob("*_result.pkl"))]

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if (sweep / "1" / "checkpoints" / "last.ckpt").exists() and len(unfinished_jobs()) == 1:
            break  # run 0 has finished, run 1 has written a checkpoint and goes on training
        time.sleep(0.05)
    running = unfinished_jobs()
    assert len(running) == 1 and (sweep / "0" / "results.json").exists()
    # the job id is submitit's local controller; the run itself is its child task process: kill that one
    controller = int(running[0].name)
    tasks = Path(f"/proc/{controller}/task/{controller}/children").read_text().split()
    assert tasks, "the job's task process"
    for pid in tasks:
        os.kill(int(pid), signal.SIGKILL)
    proc.communicate(timeout=120)
    assert not (sweep / "1" / "results.json").exists()
    again = run_module("anomaly_zoo.train", *args)
    results = [json.loads((sweep / n / "results.json").read_text()) for n in ("0", "1")]
    assert [r["status"] for r in results] == ["ok", "ok"]
    logs = "".join(p.read_text() for p in (sweep / ".submitit").rglob("*_log.out"))
    assert logs.count("resuming an unfinished run of the same config") == 1 and "skipping: a finished run" in logs
    assert again.returncode == 0
    _assert_same_run(uninterrupted, sweep / "1")  # step_seconds only slows it down


@pytest.mark.slow
def test_a_full_disk_while_saving_a_checkpoint_names_the_file_and_the_space_and_leaves_no_partial_file(
    synthetic_root, tmp_path
):
    """The disk fills up during a later epoch's save: the kernel's own ENOSPC, from /dev/full behind the
    checkpoint's temporary name (no root or tmpfs needed)."""
    out = tmp_path / "full"
    args = _train_args(synthetic_root, out, 0.1)
    proc = subprocess.Popen([sys.executable, "-m", "anomaly_zoo.train", *args], cwd=ROOT,
                            env={**os.environ, **OFFLINE_ENV}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    ckpt, tmp = out / "checkpoints" / "last.ckpt", out / "checkpoints" / "last.ckpt.tmp"
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if ckpt.exists():
            try:
                tmp.symlink_to("/dev/full")  # every later write of the checkpoint: "No space left on device"
                break
            except FileExistsError:  # a save in progress: the next one
                pass
        time.sleep(0.02)
    kept = hashlib.sha1(ckpt.read_bytes()).hexdigest()
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1, stderr[-2000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr[-2000:]
    assert f"error: CheckpointWriteError: cannot write checkpoint {ckpt}: no space left on the device" in errors[0]
    needed = int(errors[0].split("it needs ")[1].split(" bytes")[0])
    assert abs(needed - ckpt.stat().st_size) < 0.01 * ckpt.stat().st_size  # the size of a checkpoint of this model
    assert not tmp.exists() and not tmp.is_symlink(), "the partial file is removed"
    assert hashlib.sha1(ckpt.read_bytes()).hexdigest() == kept and read_checkpoint(ckpt)["epoch"] < 4


@pytest.mark.slow
def test_concurrent_sweeps_into_one_folder_run_each_job_once_and_report_only_their_own_failures(
    synthetic_root, tmp_path
):
    """A and B: the same sweep (two people, a resubmitted array); C: another config into the same folder. A run
    folder is held by one process at a time (the other skips it and says so); C's refusals are C's failures only."""
    sweep = tmp_path / "sweep"
    common = ["-m", *TINY, "+method.step_seconds=1.0", f"dataset.root={synthetic_root}", f"hydra.sweep.dir={sweep}"]

    def start(values: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "anomaly_zoo.train", *common, f"+method.lr={values}"],
                                cwd=ROOT, env={**os.environ, **OFFLINE_ENV}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip

    def wait_for(path: Path) -> None:
        deadline = time.monotonic() + 300
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert path.exists(), path

    a = start("0.05,0.04")
    wait_for(sweep / "0" / "run.json")  # A holds run 0 (about 20 s of training)
    b = start("0.05,0.04")
    wait_for(sweep / "1" / "run.json")  # B skipped run 0 and holds run 1
    c = start("0.03,0.02")
    outs = {}
    for name, proc in (("a", a), ("b", b), ("c", c)):
        out, err = proc.communicate(timeout=600)
        outs[name] = (proc.returncode, out, err)
    assert outs["a"][0] == 0 and outs["b"][0] == 0, (outs["a"][2][-1500:], outs["b"][2][-1500:])
    assert f"skipping: run folder {sweep / '0'} is in use by another process (pid {a.pid}" in outs["b"][1]
    assert "skipping:" in outs["a"][1]  # run 1: in use by B, or already finished by it
    assert outs["c"][0] == 1 and "2 run(s) of this sweep failed" in outs["c"][2]
    assert "of this sweep failed" not in outs["a"][2] + outs["b"][2]  # C's refusals are not A's or B's failures
    for n, lr in (("0", 0.05), ("1", 0.04)):
        result = json.loads((sweep / n / "results.json").read_text())
        assert result["status"] == "ok" and result["config"]["method"]["lr"] == lr
        assert len(list((sweep / n).rglob("metrics.csv"))) == 1, "trained once"


def test_an_existing_read_only_folder_is_named_as_unwritable():
    """The third case of an unwritable run folder: it exists but this user may not write to it. Root may write
    anywhere, so as root the check runs as the unprivileged user `nobody` (setpriv), in a folder it can reach."""
    import shutil
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="anomaly_zoo_ro_"))  # pytest's tmp_path is private to its user
    base.chmod(0o755)
    folder = base / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        _check_read_only(folder)
    finally:
        folder.chmod(0o755)
        shutil.rmtree(base)


def _check_read_only(folder: Path) -> None:
    import shutil

    code = ("import sys; sys.path.insert(0, sys.argv[2]); from anomaly_zoo.hydra_callbacks import folder_problem; "
            "print(folder_problem(sys.argv[1]))")  # fmt: skip
    command = [sys.executable, "-c", code, str(folder / "run"), str(ROOT)]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: cannot act as a user without write permission")
        command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120)
    # the unprivileged user may not reach this Python or this checkout (a clone in a private folder): nothing to test
    if proc.returncode != 0 and ("anomaly_zoo" not in proc.stderr or "No module named 'anomaly_zoo'" in proc.stderr):
        pytest.skip(f"the unprivileged user cannot start this Python: {proc.stderr.strip()[:200]}")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"{folder} cannot be written (Permission denied)"


@pytest.mark.parametrize(("variable", "value", "secondary"),
                         [("LOCAL_RANK", "1", True), ("NODE_RANK", "2", True), ("SLURM_PROCID", "3", True),
                          ("RANK", "0", False), ("LOCAL_RANK", "x", False)])  # fmt: skip
def test_only_rank_zero_holds_the_run_folder(variable, value, secondary, monkeypatch, tmp_path, compose_cfg):
    """Lightning starts ranks 1.. after rank 0 has claimed the folder: they must not wait for its lock (a hang, both
    DDP evaluation tests end to end) nor write its records."""
    from anomaly_zoo.run_folder import RANK_VARIABLES, claim_run_folder, config_key, release_run_folder, secondary_rank

    for name in RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, value)
    assert secondary_rank() is secondary
    cfg = compose_cfg("test", [*PIXEL, *QUICK])
    out = Path(cfg.paths.output_dir)
    assert claim_run_folder(cfg, config_key(cfg), fit=False) is None
    assert (out / "run.json").exists() is not secondary and (out / ".lock").exists() is not secondary
    release_run_folder(out)
