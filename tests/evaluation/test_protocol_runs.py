"""evaluation.protocol in a run: results.json records it, the official protocols' numbers follow from the exact ones
as their definitions say, leaderboards keep protocols apart, and `anomaly_zoo.compare` reads the official logs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from omegaconf import open_dict

from anomaly_zoo.compare import (
    ReferenceFormatError,
    comparison,
    main,
    read_official_log,
    read_paper_csv,
    read_results,
)
from anomaly_zoo.metrics import METRIC_NAMES
from anomaly_zoo.metrics.protocols import flipped
from anomaly_zoo.reporting.leaderboard import collect_runs, write_leaderboards
from anomaly_zoo.runner import run
from anomaly_zoo.validation import ConfigError

PIXEL_METHOD = [
    "~method", "+method._target_=tests.helpers.pixel_method.PixelDeviation", "+method.name=pixel_deviation",
    "+method.reference=0.9",  # brighter than most images: the score runs against the defects on some classes
    "dataset.categories=[logo,coin,brick]", "dataset.image_size=64", "eval.heatmaps_per_category=0",
]  # fmt: skip


@pytest.fixture(scope="module")
def two_runs(synthetic_root, tmp_path_factory):
    """The same training-free method scored exact and as DIVAD's official evaluation."""
    from hydra import compose, initialize_config_dir

    from tests.conftest import CONF_DIR

    out = {}
    root = tmp_path_factory.mktemp("protocols")
    for protocol in ("exact", "divad_official"):
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose("test", overrides=[f"dataset.root={synthetic_root}", "dataset.num_workers=0",
                                             "trainer.enable_progress_bar=false", *PIXEL_METHOD,
                                             f"evaluation.protocol={protocol}"])  # fmt: skip
        with open_dict(cfg):
            cfg.paths.output_dir = str(root / protocol)
        run(cfg, fit=False)
        out[protocol] = json.loads((root / protocol / "results.json").read_text())
    return root, out


def test_results_json_records_the_protocol_and_its_numbers_follow_the_definitions(two_runs):
    _, res = two_runs
    assert res["exact"]["evaluation"]["protocol"] == "exact"
    official = res["divad_official"]["evaluation"]
    assert official["protocol"] == "divad_official" and official["auroc_flipped_below_half"]
    assert "giddyyupp/DIVAD @ 9acef11" in official["source"]
    flips = 0
    for category, exact in res["exact"]["categories"].items():
        theirs = res["divad_official"]["categories"][category]
        for metric in ("I-AUROC", "P-AUROC"):  # the synthetic set's labels are its masks': only the flip differs
            assert theirs[metric] == pytest.approx(flipped(exact[metric]), abs=1e-12)
            flips += exact[metric] < 0.5
        for metric in ("I-AP", "I-F1max", "P-AP", "P-F1max"):
            assert theirs[metric] == exact[metric]
        assert theirs["PRO"] != exact["PRO"]  # 200 thresholds vs every distinct value
    assert flips >= 1  # the case the flip exists for really occurs here


def test_a_bad_protocol_is_refused_before_any_work(compose_cfg):
    cfg = compose_cfg("test", ["evaluation.protocol=paper"])
    with pytest.raises(ConfigError, match=r"evaluation.protocol='paper': must be one of exact, onenip_official"):
        run(cfg, fit=False)


def test_leaderboards_never_put_two_protocols_in_one_column(two_runs, tmp_path):
    root, res = two_runs
    written = {p.name for p in write_leaderboards(collect_runs([root]), tmp_path)}
    official = "leaderboard_synthetic_divad_official"
    suffixes = (".md", ".csv", "_rows.csv", ".html", "_logo.html", "_coin.html", "_brick.html")
    assert written == {f"{name}{suffix}" for name in ("leaderboard_synthetic", official) for suffix in suffixes}
    for name, protocol in (("leaderboard_synthetic", "exact"), (official, "divad_official")):
        rows = list(csv.DictReader((tmp_path / f"{name}.csv").open()))
        assert [r["protocol"] for r in rows] == [protocol]
        assert float(rows[0]["mean/PRO"]) == res[protocol]["mean"]["PRO"]
    assert "Evaluation protocol: **divad_official**" in (tmp_path / f"{official}.md").read_text()


ONENIP_LOG = """[2024-11-25 20:29:46,603][   train_val.py][line: 392][    INFO] Gathering final results ...
[2024-11-25 20:30:13,636][ eval_helper.py][line: 343][    INFO]
|  clsname  |  max_auc  |  max_ap  |  pixel_auc  |  pixel_ap  |
|:---------:|:---------:|:--------:|:-----------:|:----------:|
|   coin    |  {a}  | 99.6633  |   97.4097   |  59.1912   |
|   logo    |  80.4669  | 96.7374  |   95.0907   |  45.6673   |
|   mean    |  90.0000  | 98.2000  |   96.2500   |  52.4292   |
"""


def test_an_official_onenip_log_beside_a_run(two_runs, tmp_path, capsys):
    root, res = two_runs
    log = tmp_path / "dec_20241125_202853.log"
    log.write_text("|  clsname  |  max_auc |\n|:--:|:--:|\n|  old  | 1.0 |\n" + ONENIP_LOG.format(a="99.1254"))
    table = read_official_log(log)
    assert table.protocol == "onenip_official" and list(table.rows) == ["coin", "logo", "mean"]  # the last table
    assert table.rows["coin"] == {"I-AUROC": 99.1254, "I-AP": 99.6633, "P-AUROC": 97.4097, "P-AP": 59.1912}
    main([str(log), str(root / "exact")])
    out = capsys.readouterr().out
    ours = res["exact"]["categories"]["coin"]["I-AUROC"] * 100
    assert f"| coin | 99.1 / {ours:.1f} / {ours - 99.1254:+.1f} |" in out
    assert "NOTE: the reference was computed as onenip_official, ours as exact" in out
    assert "classes on one side only (left out): brick" in out


def test_a_divad_table_in_fractions_is_read_in_percent(tmp_path):
    printed = ("|  clsname  |  pro  |  max  |  pixel  |  appx  |  apsp  |  f1px  |  f1sp  |\n"
               "|:--:|:--:|:--:|:--:|:--:|:--:|:--:|:--:|\n"
               "| coin | 0.5 | 0.25 | 0.75 | 0.1 | 0.2 | 0.3 | 0.4 |\n")  # fmt: skip
    (tmp_path / "divad.txt").write_text(printed)
    table = read_official_log(tmp_path / "divad.txt")
    assert table.protocol == "divad_official"
    assert table.rows["coin"] == {"PRO": 50.0, "I-AUROC": 25.0, "P-AUROC": 75.0, "P-AP": 10.0, "I-AP": 20.0,
                                  "P-F1max": 30.0, "I-F1max": 40.0}  # fmt: skip
    assert set(table.rows["coin"]) == set(METRIC_NAMES)


def test_bad_references_name_the_file_and_the_line(two_runs, tmp_path, capsys):
    root, _ = two_runs
    not_a_log = tmp_path / "train.log"
    not_a_log.write_text("\nStarting training\n")
    with pytest.raises(ReferenceFormatError, match=r"train.log: not an official test log .*line 2: 'Starting tr"):
        read_official_log(not_a_log)
    broken = tmp_path / "broken.log"
    broken.write_text(ONENIP_LOG.format(a="n/a"))
    with pytest.raises(ReferenceFormatError, match=r"broken.log: line 5 could not be read .*coin"):
        read_official_log(broken)
    with pytest.raises(SystemExit) as stop:
        main([str(broken), str(root / "exact")])
    assert stop.value.code == 1 and capsys.readouterr().err.startswith("error: ")
    paper = tmp_path / "paper.csv"
    paper.write_text("row,I-AUROC\nmvtec,95.0\n")
    with pytest.raises(KeyError, match="row='visa' is not a row"):
        comparison(read_paper_csv(paper), read_results(root / "exact"), "visa")
    assert "| mean | 95.0 / " in comparison(read_paper_csv(paper), read_results(root / "exact"), "mvtec")


def test_results_json_keeps_images_intervals_cost_and_defect_types(two_runs):
    """Per image (path below the dataset root, category, label, defect type, score), the image metrics' bootstrap
    intervals around the reported values, the run's cost, and the per-defect view (a hand computation)."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    _, res = two_runs
    run = res["exact"]
    images = run["images"]
    root = Path(run["config"]["dataset"]["root"])
    on_disk = [p for c in ("logo", "coin", "brick") for p in (root / c / "test").rglob("*.png")]
    assert len(images["path"]) == run["cost"]["test_images"] == len(on_disk)
    assert all(not p.startswith("/") and p.split("/")[1] == "test" for p in images["path"])
    assert set(images["defect"]) == {p.parent.name for p in on_disk}  # the test sub-folders
    assert {"good", "scratch", "stain"} <= set(images["defect"])
    scores, labels = np.array(images["score"]), np.array(images["label"])
    cats, defects = np.array(images["category"]), np.array(images["defect"])
    for category, row in run["categories"].items():
        chosen = cats == category
        assert roc_auc_score(labels[chosen], scores[chosen]) == pytest.approx(row["I-AUROC"], abs=1e-12)
        low, high = run["intervals"]["categories"][category]["I-AUROC"]
        assert low <= row["I-AUROC"] <= high and high - low > 0
        for defect, entry in run["per_defect"][category]["defects"].items():
            pick = chosen & ((defects == defect) | (labels == 0))
            assert entry["I-AUROC"] == pytest.approx(roc_auc_score(labels[pick], scores[pick]), abs=1e-12)
            assert entry["images"] == int((chosen & (defects == defect)).sum())
    assert run["intervals"]["resamples"] == 1000 and run["intervals"]["mean"]["I-AP"][0] <= run["mean"]["I-AP"]
    cost = run["cost"]
    assert cost["fit_s"] is None and cost["test_s"] > 0 and cost["parameters_total"] == 0  # a parameter-free method
    assert cost["test_images_per_s"] == pytest.approx(cost["test_images"] / cost["test_s"], rel=1e-3)
    assert cost["peak_host_memory_bytes"] > 100 * 2**20 and cost["device"] == "cpu"
    assert run["decision_threshold"] is None and "recall" not in run["per_defect"]["logo"]["defects"]["scratch"]


def test_a_fitted_run_records_its_threshold_and_each_defect_types_recall(compose_cfg):
    """The decision threshold picked on validation normals: per defect type the share of its images above it, and
    the false-alarm rate it gives on the test normals (hand-computed from the per-image scores)."""
    import numpy as np

    cfg = compose_cfg("train", ["dataset.categories=[brick]", "dataset.image_size=64", "method.bank_size=256",
                                "dataset.val_ratio=0.3", "eval.heatmaps_per_category=0"])  # fmt: skip
    res = json.loads(Path(run(cfg, fit=True)["results_path"]).read_text())
    threshold = res["decision_threshold"]["value"]
    scores, labels = np.array(res["images"]["score"]), np.array(res["images"]["label"])
    defects = np.array(res["images"]["defect"])
    view = res["per_defect"]["brick"]
    assert view["false_alarm_rate"] == pytest.approx(np.mean(scores[labels == 0] > threshold))
    for defect, entry in view["defects"].items():
        assert entry["recall"] == pytest.approx(np.mean(scores[defects == defect] > threshold))
    assert res["cost"]["fit_s"] > 0 and res["cost"]["parameters_total"] > res["cost"]["parameters_trainable"] >= 0
