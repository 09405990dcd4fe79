"""Cross-dataset runs (fit on one set, test on another: results.json records both) and the refusal to score a test
split without ground truth."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from anomaly_zoo.runner import run


def test_a_cross_dataset_run_tests_on_the_other_set_and_records_both(compose_cfg, synthetic_root):
    """Fitted on the synthetic textures' brick, tested on its coins (another image source): the zero-shot transfer
    protocol on two sets the generator makes."""
    cfg = compose_cfg("train", ["dataset.categories=[brick]", "dataset.image_size=64", "method.bank_size=256",
                                "test_dataset=synthetic", f"test_dataset.root={synthetic_root}",
                                "test_dataset.categories=[coin]", "eval.heatmaps_per_category=0",
                                "eval.bootstrap_resamples=0"])  # fmt: skip
    res = json.loads(Path(run(cfg, fit=True)["results_path"]).read_text())
    assert res["dataset"] == "synthetic->synthetic"
    assert res["cross_dataset"] == {"train": {"dataset": "synthetic", "categories": ["brick"]},
                                    "test": {"dataset": "synthetic", "categories": ["coin"]}}  # fmt: skip
    coin_test = sorted((synthetic_root / "coin" / "test").rglob("*.png"))
    assert set(res["categories"]) == {"coin"} and len(res["images"]["path"]) == len(coin_test) == 40
    assert set(res["images"]["category"]) == {"coin"} and res["pixel_metrics"] == "all"
    assert res["eval_size"] == [64, 64] and res["cost"]["fit_s"] > 0


def test_metrics_on_a_split_without_ground_truth_are_refused(compose_cfg, tmp_path):
    from PIL import Image

    for rel in ("can/train/good/000.png", "can/test_private/000.png", "can/validation/good/000.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 16)).save(tmp_path / rel)
    cfg = compose_cfg("train", ["dataset=mvtec_ad2", f"dataset.root={tmp_path}", "dataset.protocol=per_category",
                                "dataset.category=can", "dataset.test_split=test_private"])  # fmt: skip
    refusal = (
        r"^dataset.test_split=test_private is for prediction only: .*"
        r"python -m anomaly_zoo.predict .*input=.*/can/test_private .*submission=mvtec_ad2$"
    )
    with pytest.raises(ValueError, match=refusal):
        run(cfg, fit=True)
    assert not (Path(cfg.paths.output_dir) / "run.json").exists()  # refused before claiming a folder
