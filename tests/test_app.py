"""The Hydra application end to end on the synthetic set: train, checkpoint → test, multirun, results.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import open_dict

from anomaly_zoo.metrics import METRIC_NAMES
from anomaly_zoo.runner import run
from tests.helpers.cli import run_module

FAST = [
    "dataset.categories=[logo,brick]",
    "dataset.image_size=128",
    "method.bank_size=256",
    "dataset.eval_batch_size=8",
]


def _check_results(path: Path, categories: list[str]) -> dict:
    res = json.loads(path.read_text())
    assert {"method", "dataset", "config", "categories", "mean", "runtime_s"} <= set(res)
    assert list(res["categories"]) == categories
    for row in [*res["categories"].values(), res["mean"]]:
        assert list(row) == list(METRIC_NAMES) and all(0.0 <= v <= 1.0 for v in row.values())
    for k in METRIC_NAMES:
        assert res["mean"][k] == pytest.approx(sum(r[k] for r in res["categories"].values()) / len(categories))
    return res


def test_train_then_test_from_checkpoint(compose_cfg):
    cfg = compose_cfg("train", FAST)
    out = run(cfg, fit=True)
    res = _check_results(Path(out["results_path"]), ["logo", "brick"])
    assert res["method"] == "patch_knn" and res["dataset"] == "synthetic" and res["protocol"] == "unified"
    assert res["config"]["method"]["bank_size"] == 256
    # A real detector: well above chance at pixel level on both categories.
    assert res["mean"]["P-AUROC"] > 0.85
    run_dir = Path(cfg.paths.output_dir)
    assert len(list((run_dir / "heatmaps").glob("*.png"))) == 4
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()

    cfg_test = compose_cfg("test", [*FAST, f"ckpt_path={ckpt}"])
    with open_dict(cfg_test):
        cfg_test.paths.output_dir = str(run_dir / "from_ckpt")
    again = run(cfg_test, fit=False)
    assert again["per_category"] == out["per_category"]


def test_test_entry_refuses_untrained_method_without_checkpoint(compose_cfg):
    with pytest.raises(ValueError, match=r"must be trained.*ckpt_path="):
        run(compose_cfg("test", FAST), fit=False)


def test_bad_config_value_is_named(compose_cfg):
    with pytest.raises(Exception, match=r"protocol='both' is not one of"):
        run(compose_cfg("train", [*FAST, "dataset.protocol=both"]), fit=True)


@pytest.mark.slow
def test_cli_multirun_writes_one_results_file_per_run(synthetic_root, tmp_path):
    args = [
        "-m",
        f"dataset.root={synthetic_root}",
        "dataset.categories=[coin]",
        "dataset.image_size=96",
        "dataset.num_workers=0",
        "method.sampling=random",
        "method.bank_size=128,512",
        "trainer.enable_progress_bar=false",
        f"hydra.sweep.dir={tmp_path}/sweep",
    ]
    proc = run_module("anomaly_zoo.train", *args)
    files = sorted((tmp_path / "sweep").glob("*/results.json"))
    assert len(files) == 2
    sizes = sorted(json.loads(f.read_text())["config"]["method"]["bank_size"] for f in files)
    assert sizes == [128, 512]
    assert "| **mean** |" in proc.stdout


def test_cli_output_dir_override_moves_results_logs_and_heatmaps_together(synthetic_root, tmp_path):
    out = tmp_path / "chosen"
    args = [
        f"dataset.root={synthetic_root}", "dataset.categories=[coin]",
        "dataset.image_size=64", "method.sampling=random", "method.bank_size=64", "logger=csv",
        "trainer.enable_progress_bar=false", "eval.heatmaps_per_category=1", f"paths.output_dir={out}",
        f"hydra.run.dir={tmp_path}/hydra_run",
    ]  # fmt: skip
    run_module("anomaly_zoo.train", *args)
    assert (out / "results.json").is_file() and list((out / "heatmaps").glob("*.png"))
    assert list(out.glob("csv/*/metrics.csv")) or list(out.glob("csv/*/hparams.yaml"))
    assert not (tmp_path / "hydra_run" / "results.json").exists()
