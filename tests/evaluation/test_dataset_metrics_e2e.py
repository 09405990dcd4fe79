"""Issue 26's dataset metrics end to end: `runner.run` on the tiny MVTec LOCO, Real-IAD and MVTec AD 2 layouts of
tests/helpers/anomalib_layouts.py, with a training-free per-pixel method whose maps this test recomputes from the
image files. Each results.json number is checked against an independent computation: the metric functions called
directly on ground truth read here from the PNGs and defects_config.json, or scikit-learn."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import open_dict
from PIL import Image
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from anomaly_zoo.metrics import METRIC_NAMES
from anomaly_zoo.metrics.spro import DefectType, GroundTruthChannel, au_spro
from anomaly_zoo.runner import run
from tests.conftest import CONF_DIR
from tests.helpers import anomalib_layouts as layouts

REFERENCE = 0.5  # PixelDeviation's default: map = |image - 0.5| averaged over the channels


def _run(name: str, root: Path, out: Path, *extra: str) -> dict[str, Any]:
    """A training-free test run at the layouts' own resolution (no resize: the maps are the files' pixels)."""
    height, width = layouts.SIZE[::-1]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("test", overrides=[
            f"dataset={name}", f"dataset.root={root}", "dataset.num_workers=0", "trainer.enable_progress_bar=false",
            "~method", "+method._target_=tests.helpers.pixel_method.PixelDeviation", "+method.name=pixel_deviation",
            f"dataset.image_size=[{height},{width}]", "eval.heatmaps_per_category=0", "eval.bootstrap_resamples=0",
            *extra,
        ])  # fmt: skip
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
    return json.loads(Path(run(cfg, fit=False)["results_path"]).read_text())


def _map(path: Path) -> np.ndarray:
    """PixelDeviation's map of one image file, computed here (float32, as the method's)."""
    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / np.float32(255)
    return np.abs(pixels - np.float32(REFERENCE)).mean(axis=2, dtype=np.float32)


def _rows(images: dict[str, list], **where: Any) -> np.ndarray:
    """Indices of the results.json `images` rows whose columns have the given values."""
    keep = np.ones(len(images["path"]), dtype=bool)
    for column, value in where.items():
        keep &= np.asarray(images[column]) == value
    return np.flatnonzero(keep)


# ---------------------------------------------------------------------------------------------------- MVTec LOCO
LOCO_CATEGORIES = ("breakfast_box", "juice_bottle")


@pytest.fixture(scope="module")
def loco_run(tmp_path_factory) -> tuple[Path, dict[str, Any]]:
    root = tmp_path_factory.mktemp("loco")
    for category in LOCO_CATEGORIES:
        layouts.loco(root, category=category, good=2)
    results = _run("mvtec_loco", root, root / "run",
                   f"dataset.categories=[{','.join(LOCO_CATEGORIES)}]")  # fmt: skip
    return root, results


def _loco_truth(root: Path, images: dict[str, list], at: np.ndarray) -> tuple[np.ndarray, list, np.ndarray]:
    """maps, sPRO channels and union masks of the rows `at`, read from the files: a defective image's channels are
    the PNGs in ground_truth/<kind>/<image stem>/, typed by the pixel value in defects_config.json."""
    maps, channels, masks = [], [], []
    for i in at.tolist():
        image = root / images["path"][i]
        category = image.parts[len(root.parts)]
        config = json.loads((root / category / "defects_config.json").read_text())
        types = {e["pixel_value"]: DefectType(e["defect_name"], e["pixel_value"], e["saturation_threshold"],
                                              e["relative_saturation"]) for e in config}  # fmt: skip
        maps.append(_map(image))
        found = []
        if images["label"][i]:
            for png in sorted((root / category / "ground_truth" / image.parent.name / image.stem).glob("*.png")):
                pixels = np.asarray(Image.open(png))
                found.append(GroundTruthChannel(pixels > 0, types[int(pixels.max())]))
        channels.append(found)
        masks.append(np.any([c.mask for c in found], axis=0) if found else np.zeros(maps[-1].shape, bool))
    return np.stack(maps), channels, np.stack(masks)


def test_loco_run_reports_spro_per_category_against_a_direct_call(loco_run):
    root, res = loco_run
    block, images = res["dataset_metrics"], res["images"]
    assert block["metrics"] == ["sPRO@0.05"] and set(block["categories"]) == set(LOCO_CATEGORIES)
    assert list(res["mean"]) == list(METRIC_NAMES) and res["pixel_metrics"] == "all"
    values = []
    for category in LOCO_CATEGORIES:
        at = _rows(images, category=category)
        maps, channels, _ = _loco_truth(root, images, at)
        assert sum(len(c) for c in channels) == 3  # two logical defects (two PNGs) and one structural
        expected = au_spro(maps, channels, 0.05)
        assert 0.2 < expected < 0.99  # the layout's defects are found, but not perfectly
        assert block["categories"][category]["sPRO@0.05"] == pytest.approx(expected, abs=1e-12)
        values.append(expected)
    assert block["mean"]["sPRO@0.05"] == pytest.approx(np.mean(values), abs=1e-12)


@pytest.mark.parametrize("kind", ["logical", "structural"])
def test_loco_run_reports_logical_and_structural_apart(loco_run, kind):
    """Each kind's row scores the good images with that kind's defective ones (as MVTec's LOCO evaluation)."""
    root, res = loco_run
    rows, images = res["dataset_metrics"]["by_anomaly_kind"][kind], res["images"]
    assert set(rows["categories"]) == set(LOCO_CATEGORIES)
    for category in LOCO_CATEGORIES:
        at = np.union1d(_rows(images, category=category, anomaly_kind="good"),
                        _rows(images, category=category, anomaly_kind=f"{kind}_anomalies"))  # fmt: skip
        labels = np.asarray(images["label"])[at]
        assert labels.tolist().count(0) == 2 and labels.tolist().count(1) == 1
        maps, channels, masks = _loco_truth(root, images, at)
        row = rows["categories"][category]
        assert row["sPRO@0.05"] == pytest.approx(au_spro(maps, channels, 0.05), abs=1e-12)
        assert row["P-AUROC"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)
        scores = np.asarray(images["score"])[at]
        assert row["I-AUROC"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert rows["mean"]["sPRO@0.05"] == pytest.approx(
        np.mean([rows["categories"][c]["sPRO@0.05"] for c in LOCO_CATEGORIES]), abs=1e-12
    )


# ---------------------------------------------------------------------------------------------------- Real-IAD
def test_realiad_run_reports_sample_level_scores_as_scikit_learn_on_the_max_over_views(tmp_path):
    objects = [("train", "S0001", "OK"), *[("test", f"S{i:04d}", "NG" if i % 2 else "OK") for i in range(2, 10)]]
    layouts.realiad(tmp_path, objects=objects)
    res = _run("realiad", tmp_path, tmp_path / "run", "dataset.categories=[audiojack]", "logger=csv")
    images, block = res["images"], res["dataset_metrics"]
    [metrics_csv] = (tmp_path / "run").glob("csv/**/metrics.csv")
    [logged] = [row for row in csv.DictReader(metrics_csv.open()) if row.get("test/S-AUROC")]
    assert float(logged["test/S-AUROC"]) == pytest.approx(block["mean"]["S-AUROC"], abs=1e-6)
    assert len(images["path"]) == 16 and len(set(images["sample_id"])) == 8  # two views per object
    by_object: dict[str, tuple[float, int]] = {}
    for sample, score, label in zip(images["sample_id"], images["score"], images["label"], strict=True):
        best, worst = by_object.get(sample, (-np.inf, 0))
        by_object[sample] = (max(best, score), max(worst, label))
    scores, labels = (np.array(column) for column in zip(*by_object.values(), strict=True))
    assert labels.sum() == 4
    row = block["categories"]["audiojack"]
    assert row["S-AUROC"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert row["S-AP"] == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert block["mean"]["S-AUROC"] == row["S-AUROC"] and block["metrics"] == ["S-AUROC", "S-AP", "S-F1max"]
    image_auroc = roc_auc_score(images["label"], images["score"])
    assert res["categories"]["audiojack"]["I-AUROC"] == pytest.approx(image_auroc, abs=1e-12)


# ---------------------------------------------------------------------------------------------------- MVTec AD 2
def test_mvtec_ad2_run_chooses_the_segf1_threshold_on_its_own_validation_images(tmp_path):
    """A training-free method: no train split is indexed, the validation split still is, and SegF1's threshold is
    mean + 3 std of the validation maps' pixels (the test set never chooses it)."""
    w = layouts.mvtec_ad2(tmp_path, val=3, good=2)
    res = _run("mvtec_ad2", tmp_path, tmp_path / "run", "dataset.categories=[can]")
    block = res["dataset_metrics"]
    assert block["metrics"] == ["PRO@0.05", "SegF1"] and list(res["mean"]) == list(METRIC_NAMES)
    val_pixels = np.stack([_map(Path(p)) for p in w["val"]]).astype(np.float64)
    threshold = block["segf1_threshold"]["can"]
    assert threshold["validation_images"] == 3 and threshold["rule"] == "mean_std"
    assert threshold["value"] == pytest.approx(val_pixels.mean() + 3 * val_pixels.std(), rel=1e-9)
    images = res["images"]
    maps = np.stack([_map(tmp_path / p) for p in images["path"]])
    gt = {Path(p).name.removesuffix("_mask.png"): np.asarray(Image.open(p)) > 0 for p in w["mask"]}
    masks = np.stack([gt.get(Path(p).stem, np.zeros(maps.shape[1:], bool)) for p in images["path"]])
    assert masks.sum() == 24 and images["label"].count(1) == 1
    expected = f1_score(masks.ravel(), maps.ravel() > threshold["value"])
    assert 0.0 < expected < 1.0
    assert block["categories"]["can"]["SegF1"] == pytest.approx(expected, abs=1e-12)
    assert 0.0 < block["categories"]["can"]["PRO@0.05"] < 1.0 and "PRO@0.05" not in res["categories"]["can"]


def test_mvtec_ad2_without_validation_images_stops_before_the_run(tmp_path):
    layouts.mvtec_ad2(tmp_path, val=0)
    with pytest.raises(ValueError, match=r"^SegF1 \(dataset=mvtec_ad2\) .* none for can: .*validation/good\)"):
        _run("mvtec_ad2", tmp_path, tmp_path / "run", "dataset.categories=[can]")
    assert not (tmp_path / "run" / "run.json").exists()


def test_a_cross_dataset_run_reports_the_tested_datasets_metrics(tmp_path):
    """Fit on MVTec LOCO, test on MVTec AD 2: SegF1 and PRO@0.05 (the tested set's protocol, its threshold on the
    tested set's validation images), no sPRO."""
    layouts.loco(tmp_path / "loco")
    w = layouts.mvtec_ad2(tmp_path / "ad2", val=2)
    target = ["test_dataset=mvtec_ad2", f"test_dataset.root={tmp_path / 'ad2'}", "test_dataset.categories=[can]"]
    res = _run("mvtec_loco", tmp_path / "loco", tmp_path / "run", "dataset.categories=[breakfast_box]", *target)
    assert res["dataset"] == "mvtec_loco->mvtec_ad2" and res["dataset_metrics"]["metrics"] == ["PRO@0.05", "SegF1"]
    val_pixels = np.stack([_map(Path(p)) for p in w["val"]]).astype(np.float64)
    threshold = res["dataset_metrics"]["segf1_threshold"]["can"]
    assert threshold["value"] == pytest.approx(val_pixels.mean() + 3 * val_pixels.std(), rel=1e-9)


def test_an_undefined_sample_metric_is_null_in_results_and_left_out_of_the_logger(tmp_path):
    """Only normal test objects: the sample-level AUROC/AP are undefined (null in results.json, never a number) and
    the logger line leaves them out instead of failing on them."""
    objects = [("train", "S0001", "OK"), *[("test", f"S{i:04d}", "OK") for i in range(2, 6)]]
    layouts.realiad(tmp_path, objects=objects)
    res = _run("realiad", tmp_path, tmp_path / "run", "dataset.categories=[audiojack]", "logger=csv")
    block = res["dataset_metrics"]
    assert block["mean"]["S-AUROC"] is None and block["categories"]["audiojack"]["S-AP"] is None
    [metrics_csv] = (tmp_path / "run").glob("csv/**/metrics.csv")
    header = metrics_csv.read_text().splitlines()[0].split(",")
    logged = {c for c in header if c.startswith("test/S-")}
    defined = {f"test/{k}" for k, v in block["mean"].items() if v is not None}
    assert logged == defined, header
