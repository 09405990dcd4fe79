"""Issue 26's dataset metrics in a run: the `dataset_metrics` block of results.json, what the datasets side feeds it,
and the one-line errors when an input is missing."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from omegaconf import open_dict
from PIL import Image

from anomaly_zoo.evaluation.dataset_metrics import check_dataset_inputs, dataset_metrics_block, gt_channels
from anomaly_zoo.metrics import METRIC_NAMES, compute_category_metrics, compute_metrics
from anomaly_zoo.metrics import dataset_specific as ds
from anomaly_zoo.metrics.dataset_specific import DatasetMetricsRequest, dataset_specific_metrics, kind_subsets
from anomaly_zoo.metrics.samples import sample_metrics
from anomaly_zoo.metrics.spro import DefectType, GroundTruthChannel, au_spro

TINY = [
    "~method", "+method._target_=tests.helpers.tiny_trainable.TinyAutoencoder", "+method.name=tiny",
    "+method.max_epochs=1", "dataset.categories=[logo,grass]", "dataset.image_size=32", "eval.heatmaps_per_category=0",
]  # fmt: skip


def test_kind_subsets_take_all_normals_with_each_kind():
    subsets = kind_subsets([0, 1, 1, 0, 1], ["good", "logical", "structural", None, "logical"])
    assert {k: v.tolist() for k, v in subsets.items()} == {"logical": [0, 1, 3, 4], "structural": [0, 2, 3]}
    with pytest.raises(ValueError, match="no anomaly kind"):
        kind_subsets([0, 1], ["good", None])


def _loco_like(seed: int = 0):
    rng = np.random.default_rng(seed)
    maps = rng.random((6, 8, 8)).astype(np.float32)
    masks = np.zeros((6, 8, 8), dtype=np.uint8)
    channels: list[list[GroundTruthChannel]] = [[] for _ in range(6)]
    for i, (region, kind_sat) in {2: (np.s_[1:5, 1:5], 5), 3: (np.s_[0:3, :], 0.5), 5: (np.s_[4:8, 4:8], 3)}.items():
        mask = np.zeros((8, 8), dtype=bool)
        mask[region] = True
        relative = isinstance(kind_sat, float)
        channels[i] = [GroundTruthChannel(mask, DefectType("d", 1 + relative, kind_sat, relative))]
        masks[i][mask] = 1
        maps[i][mask] += 0.4
    labels = masks.reshape(6, -1).any(1).astype(int)
    return maps.reshape(6, -1).max(1), labels, maps, masks, channels


def test_block_per_category_kinds_and_samples_against_direct_calls():
    scores, labels, maps, masks, channels = _loco_like()
    cats = ["a", "a", "a", "b", "b", "b"]
    kinds = [None, None, "logical", "structural", None, "logical"]
    ids = ["s0", "s0", "s1", "s0", "s1", "s1"]
    request = DatasetMetricsRequest(pro_limits=(0.05,), spro=True, by_anomaly_kind=True, sample_level=True)
    rows, _ = compute_category_metrics(scores, labels, maps, masks, cats, extra_pro_limits=(0.05,))
    block = dataset_specific_metrics(request, scores, labels, maps, masks, cats, suite_rows=rows, sample_ids=ids,
                                     anomaly_kinds=kinds, gt_channels=channels)  # fmt: skip
    assert block is not None
    a = block["categories"]["a"]
    assert a["PRO@0.05"] == rows["a"]["PRO@0.05"]
    assert a["sPRO@0.05"] == au_spro(maps[:3], channels[:3], 0.05)
    assert a["S-AUROC"] == sample_metrics(scores[:3], labels[:3], ids[:3])["S-AUROC"]
    assert block["mean"]["sPRO@0.05"] == pytest.approx((a["sPRO@0.05"] + block["categories"]["b"]["sPRO@0.05"]) / 2)
    logical_b = block["by_anomaly_kind"]["logical"]["categories"]["b"]  # b's good image (4) and its logical one (5)
    direct = compute_metrics(scores[[4, 5]], labels[[4, 5]], maps[[4, 5]], masks[[4, 5]], extra_pro_limits=(0.05,))
    assert logical_b["I-AUROC"] == direct["I-AUROC"] and logical_b["PRO@0.05"] == direct["PRO@0.05"]
    assert logical_b["sPRO@0.05"] == au_spro(maps[[4, 5]], [channels[4], channels[5]], 0.05)
    assert set(block["by_anomaly_kind"]) == {"logical", "structural"}
    assert "a" not in block["by_anomaly_kind"]["structural"]["categories"]  # a has no structural anomaly


def test_missing_inputs_are_one_line_errors():
    scores, labels, maps, masks, _ = _loco_like()
    cats = ["a"] * 6
    for request, match in (
        (DatasetMetricsRequest(sample_level=True), "sample id"),
        (DatasetMetricsRequest(spro=True), "ground-truth channels"),
        (DatasetMetricsRequest(segf1=True), r"dataset.val_ratio>0"),
        (DatasetMetricsRequest(pro_limits=(0.05,)), "extra_pro_limits"),
    ):
        with pytest.raises(ValueError, match=match) as err:
            dataset_specific_metrics(request, scores, labels, maps, masks, cats)
        assert "\n" not in str(err.value)
    assert dataset_specific_metrics(DatasetMetricsRequest(), scores, labels, maps, masks, cats) is None


@pytest.mark.parametrize(
    ("own_split", "train_split", "fix"),
    [(True, False, r"its own validation split \(.*/<category>/validation/good\), which is empty or missing there$"),
     (False, False, r"train split is not indexed here \(a training-free method, or the test set of a cross-dataset "
                    r"run\), so dataset.val_ratio holds no image out; SegF1 needs a dataset with its own validation"),
     (False, True, r"set dataset.val_ratio>0")],
)  # fmt: skip
def test_segf1_without_validation_images_names_the_fix_that_works(tmp_path, own_split, train_split, fix):
    """dataset.val_ratio holds out images of the train split, which training-free methods never index."""
    normal = SimpleNamespace(category="a", label=0)
    datamodule = SimpleNamespace(name="d", root=tmp_path, categories=["a", "b"], use_train_split=train_split,
                                 info=SimpleNamespace(own_val_split=own_split), val_dataset=None)  # fmt: skip
    request = DatasetMetricsRequest(segf1=True)
    for val_dataset, missing in ((None, "a, b"), (SimpleNamespace(samples=[normal]), "b")):
        datamodule.val_dataset = val_dataset
        with pytest.raises(ValueError, match=rf"^SegF1 \(dataset=d\) .* this run has none for {missing}: .*{fix}"):
            check_dataset_inputs(request, datamodule)
    datamodule.val_dataset = SimpleNamespace(samples=[normal, SimpleNamespace(category="b", label=0)])
    check_dataset_inputs(request, datamodule)


def test_loco_inputs_from_the_layout(tmp_path):
    """LOCO's side: defects_config.json per category, one ground-truth folder of PNGs per defective image."""
    datamodule = SimpleNamespace(root=tmp_path, info=SimpleNamespace(subdir=""), categories=["box"], name="mvtec_loco",
                                 mask_resize="nearest", val_dataset=None)  # fmt: skip
    request = DatasetMetricsRequest(spro=True, by_anomaly_kind=True)
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}/box/defects_config.json") as err:
        check_dataset_inputs(request, datamodule)
    assert "\n" not in str(err.value)
    (tmp_path / "box").mkdir()
    entry = {"defect_name": "missing", "pixel_value": 255, "saturation_threshold": 32, "relative_saturation": False}
    (tmp_path / "box" / "defects_config.json").write_text(json.dumps([entry]))
    check_dataset_inputs(request, datamodule)
    gt = tmp_path / "box" / "ground_truth" / "logical_anomalies" / "000"
    gt.mkdir(parents=True)
    png = np.zeros((16, 16), np.uint8)
    png[:8, :8] = 255  # 64 px at 16x16, 16 px at 8x8; saturation 32 px -> 8 px at 8x8
    Image.fromarray(png).save(gt / "000.png")
    good = SimpleNamespace(label=0, category="box", mask_path=None, image_path="good.png", anomaly_kind="good")
    bad = SimpleNamespace(label=1, category="box", mask_path=str(gt), image_path="bad.png", anomaly_kind="logical")
    channels = gt_channels([good, bad], (8, 8), datamodule)
    assert channels[0] == [] and channels[1][0].mask.sum() == 16 and channels[1][0].saturation_area() == 8
    maps = np.zeros((2, 8, 8), np.float32)
    maps[1, :2, :4] = 1.0  # 8 of the 16 px above every normal pixel: saturated at FPR 0
    masks = np.stack([np.zeros((8, 8)), channels[1][0].mask]).astype(np.uint8)
    rows, _ = compute_category_metrics(np.array([0.0, 1.0]), np.array([0, 1]), maps, masks, ["box", "box"])
    block = dataset_metrics_block(request, [good, bad], np.array([0.0, 1.0]), np.array([0, 1]), maps, masks, rows,
                                  datamodule)  # fmt: skip
    assert block is not None and block["categories"]["box"]["sPRO@0.05"] == pytest.approx(1.0)
    assert block["by_anomaly_kind"]["logical"]["mean"]["sPRO@0.05"] == pytest.approx(1.0)


def _tiny_cfg(compose_cfg, tmp_path, *extra: str):
    cfg = compose_cfg("train", [*TINY, *extra])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
    return cfg


@pytest.mark.filterwarnings("ignore")
def test_run_writes_dataset_metrics_and_keeps_the_suite_rows(compose_cfg, tmp_path, monkeypatch):
    from anomaly_zoo.runner import run

    monkeypatch.setitem(ds.DATASET_METRICS, "synthetic", DatasetMetricsRequest(pro_limits=(0.05,), segf1=True))
    with pytest.raises(ValueError, match=r"SegF1 \(dataset=synthetic\).*dataset.val_ratio>0") as err:
        run(_tiny_cfg(compose_cfg, tmp_path, "dataset.val_ratio=0"), fit=True)
    assert "\n" not in str(err.value)
    run(_tiny_cfg(compose_cfg, tmp_path, "dataset.val_ratio=0.25"), fit=True)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert list(results["mean"]) == list(METRIC_NAMES)  # the suite's rows keep the seven metrics
    block = results["dataset_metrics"]
    assert set(block["categories"]) == {"logo", "grass"} and block["metrics"] == ["PRO@0.05", "SegF1"]
    for category, row in block["categories"].items():
        assert 0.0 <= row["PRO@0.05"] <= 1.0 and 0.0 <= row["SegF1"] <= 1.0
        threshold = block["segf1_threshold"][category]
        assert threshold["rule"] == "mean_std" and threshold["k"] == 3.0 and threshold["validation_images"] > 0
