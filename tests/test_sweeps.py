"""Multirun sweeps: failures recorded, finished runs skipped, leaderboards equal to the runs' results."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest

from tests.helpers.cli import ROOT, run_module


def _sweep(synthetic_root, sweep_dir, *extra, expect=0):
    common = [
        "-m", f"dataset.root={synthetic_root}", "dataset.categories=[logo,coin]", "dataset.num_workers=0",
        "~method", "+method._target_=tests.helpers.pixel_method.PixelDeviation", "+method.name=pixel_deviation",
        "trainer.enable_progress_bar=false", "eval.heatmaps_per_category=0", f"hydra.sweep.dir={sweep_dir}",
    ]  # fmt: skip
    return run_module("anomaly_zoo.test", *common, *extra, expect=expect)


@pytest.fixture(scope="module")
def sweep(synthetic_root, tmp_path_factory):
    """A 2 x 2 sweep plus one run that fails (reference='oops' is not a number)."""
    sweep_dir = tmp_path_factory.mktemp("sweep")
    # the sweep runs to its end, then exits with status 1 because runs failed
    first = _sweep(synthetic_root, sweep_dir, "+method.reference=0.3,0.7,oops", "dataset.image_size=64,96", expect=1)
    return sweep_dir, first


def test_failed_run_is_recorded_and_the_sweep_goes_on(sweep):
    sweep_dir, first = sweep
    # after the last run: a table of the failed runs, each with its root cause on one line
    summary = first.stderr[first.stderr.index("2 run(s) of this sweep failed") :]
    assert summary.count(f"| {sweep_dir}/") == 2 and "TypeError" in summary
    results = [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/results.json"))]
    assert len(results) == 6
    failed = [r for r in results if r["status"] == "failed"]
    assert len(failed) == 2 and all("TypeError" in r["error"] or "ValueError" in r["error"] for r in failed)
    assert all(r["mean"] and r["status"] == "ok" for r in results if r not in failed)


@pytest.mark.slow
def test_rerun_skips_finished_runs(sweep, synthetic_root):
    sweep_dir, _ = sweep
    stamps = {p: p.stat().st_mtime_ns for p in sweep_dir.glob("*/results.json")}
    again = _sweep(synthetic_root, sweep_dir, "+method.reference=0.3,0.7", "dataset.image_size=64,96")
    assert again.stdout.count("skipping: a finished run") == 4
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_leaderboard_rows_equal_the_runs_results(sweep, tmp_path):
    sweep_dir, _ = sweep
    from anomaly_zoo.leaderboard import main

    main([str(sweep_dir), f"out={tmp_path}"])
    rows = list(csv.DictReader((tmp_path / "leaderboard_synthetic.csv").open()))
    assert len(rows) == 6 and sum(r["status"] == "failed" for r in rows) == 2
    for row in rows:
        res = json.loads(Path(row["results"]).read_text())
        assert row["method"] == "pixel_deviation"
        if res["status"] == "ok":
            assert float(row["mean/I-AUROC"]) == res["mean"]["I-AUROC"]
            assert float(row["logo/P-AP"]) == res["categories"]["logo"]["P-AP"]
            assert "reference=" in row["run"] and "image_size=" in row["run"]  # what distinguishes the runs
        else:
            assert row["error"] == res["error"]
    md = (tmp_path / "leaderboard_synthetic.md").read_text()
    assert md.count("failed: ") == 2 * 3  # in the mean table and in both category tables
    assert "**" in md and "### logo" in md


def test_leaderboard_logs_to_wandb_offline(sweep, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    sweep_dir, _ = sweep
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    from anomaly_zoo.leaderboard import main

    main([str(sweep_dir), f"out={tmp_path}", "logger=wandb", "project=anomaly_zoo_test"])
    assert list((tmp_path / "wandb").glob("offline-run-*")), "wandb offline run directory"


def test_training_with_wandb_offline_logs_config_metrics_and_heatmaps(compose_cfg, monkeypatch, tmp_path):
    pytest.importorskip("wandb")
    from omegaconf import open_dict

    from anomaly_zoo.runner import run

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    overrides = ["logger=wandb", "logger.tags=[test]", "dataset.categories=[logo]", "dataset.image_size=64"]
    cfg = compose_cfg("train", [*overrides, "method.bank_size=64", "eval.heatmaps_per_category=1"])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
    run(cfg, fit=True)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    files = runs[0] / "files"
    assert list(files.glob("media/images/heatmaps_*.png")), "heatmap overlays logged as images"
    # Offline, the metrics and the config are in the run's binary log (synced later with `wandb sync`).
    # wandb's service process writes that log asynchronously: on loaded cores it lands after finish() returns.
    deadline = time.monotonic() + 60
    record = next(runs[0].glob("run-*.wandb")).read_bytes()
    while not (b"test/I-AUROC" in record and b"bank_size" in record) and time.monotonic() < deadline:
        time.sleep(1)
        record = next(runs[0].glob("run-*.wandb")).read_bytes()
    assert b"test/I-AUROC" in record and b"bank_size" in record
    from anomaly_zoo.config_keys import seedless_key
    from anomaly_zoo.run_folder import resolved_config

    assert seedless_key(resolved_config(cfg)).encode() in record  # the W&B group: the config without its seed


def test_seedless_key_groups_runs_that_differ_only_in_the_seed(compose_cfg):
    from anomaly_zoo.config_keys import config_key, seedless_key
    from anomaly_zoo.run_folder import resolved_config

    one, two, other = (resolved_config(compose_cfg("train", o)) for o in (["seed=1"], ["seed=2"], ["seed=1",
                       "method.bank_size=64"]))  # fmt: skip
    assert one["dataset"]["seed"] == 1 and two["dataset"]["seed"] == 2  # the copies of the seed differ too
    assert seedless_key(one) == seedless_key(two) != seedless_key(other)
    assert config_key(one) != config_key(two)


@pytest.mark.parametrize(
    "preset",
    ["onenip_table4a", "onenip_table4b", "onenip_table4c", "onenip_table3", "divad_table4", "divad_table5",
     "divad_table6"],
)  # fmt: skip
def test_paper_sweep_presets_compose(preset):
    from hydra import compose, initialize_config_dir

    from tests.conftest import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"sweep={preset}"], return_hydra_config=True)
        params = cfg.hydra.sweeper.params
        assert params["method"] == preset.split("_")[0] and len(params) >= 2
        for key, value in params.items():  # every swept group option exists
            if key.startswith("+"):
                for option in value.split(","):
                    compose("train", overrides=[f"method={params['method']}", f"{key}={option}"])
        if preset == "onenip_table4a":
            rows = params["+method/onenip/ablation"].split(",")
            assert len(rows) == 6
            for row in rows:  # every row is a config that exists and sets the three switches
                m = compose("train", overrides=["method=onenip", f"+method/onenip/ablation={row}"]).method
                assert {"decoder", "restoration", "refiner"} <= set(m)
                assert m.decoder in ("query", "static", "dynamic")
        if preset == "onenip_table4b":
            for row in params["+method/onenip/depth"].split(","):
                m = compose("train", overrides=["method=onenip", f"+method/onenip/depth={row}"]).method
                assert row == f"e{m.encoder_layers}d{m.decoder_layers}"


@pytest.mark.parametrize(
    ("preset", "key"), [("leaderboard_synthetic", "experiment"), ("leaderboard_baselines", "method")]
)
def test_leaderboard_presets_run_baseline_patchcore_padim_and_onenip(preset, key):
    from hydra import compose, initialize_config_dir

    from tests.conftest import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        options = compose("train", overrides=[f"sweep={preset}"], return_hydra_config=True).hydra.sweeper.params[key]
        names = {compose("train", overrides=[f"{key}={option}"]).method.name for option in options.split(",")}
    assert names == {"patch_knn", "patchcore", "padim", "onenip"}


def test_leaderboard_labels_name_only_what_tells_runs_apart(tmp_path):
    from anomaly_zoo.config_keys import flatten
    from anomaly_zoo.reporting.leaderboard import RunRecord, label_runs

    def record(method: str, config: dict) -> RunRecord:
        return RunRecord(tmp_path, method, "synthetic", "ok", "", {}, {}, config, flat=flatten(config))

    runs = [
        record("patch_knn", {"method": {"name": "patch_knn", "bank_size": 1024}, "dataset": {"image_size": 256}}),
        record("patch_knn", {"method": {"name": "patch_knn", "bank_size": 4096}, "dataset": {"image_size": 256}}),
        record("padim", {"method": {"name": "padim", "model": {"n_features": 100}}, "dataset": {"image_size": 256}}),
        record("onenip", {"method": {"name": "onenip", "hidden": 128}, "dataset": {"image_size": 128}}),
    ]
    label_runs(runs)
    assert [r.label for r in runs] == [
        "patch_knn bank_size=1024 dataset.image_size=256",
        "patch_knn bank_size=4096 dataset.image_size=256",
        "padim dataset.image_size=256",  # its own keys do not vary between padim runs: the name says enough
        "onenip dataset.image_size=128",
    ]


def test_compare_to_paper_matches_rows_by_a_groups_override(tmp_path, capsys):
    """--match method/onenip/ablation: the row is the run's `+method/onenip/ablation=<row>` override (its
    .hydra/overrides.yaml); --match alpha: a value in the run label."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("compare_to_paper", ROOT / "experiments" / "compare_to_paper.py")
    compare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare)
    rows = []
    for i, (row, alpha) in enumerate([("full", 0.5), ("no_prompt", 0.25)]):
        run_dir = tmp_path / str(i)
        (run_dir / ".hydra").mkdir(parents=True)
        (run_dir / ".hydra" / "overrides.yaml").write_text(f"- method=onenip\n- +method/onenip/ablation={row}\n")
        label = f"onenip decoder=x alpha={alpha}"
        rows.append({"run": label, "status": "ok", "error": "", "results": str(run_dir / "results.json"),
                     "mean/I-AUROC": 0.9 + i / 100})  # fmt: skip
    board = tmp_path / "leaderboard.csv"
    with board.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    paper = tmp_path / "paper.csv"
    paper.write_text("row,I-AUROC\nfull,95.0\nno_prompt,96.0\n0.25,97.0\n")
    compare.main([str(paper), str(board), "--match", "method/onenip/ablation"])
    out = capsys.readouterr().out
    assert "| onenip decoder=x alpha=0.5 | 90.0 / 95.0 / -5.0 |" in out
    assert "| onenip decoder=x alpha=0.25 | 91.0 / 96.0 / -5.0 |" in out
    compare.main([str(paper), str(board), "--match", "alpha"])
    out = capsys.readouterr().out
    assert "alpha=0.25 | 91.0 / 97.0 / -6.0 |" in out and "alpha=0.5 |" not in out


@pytest.mark.slow  # 25-40 s on 2 cores
def test_a_three_trial_optuna_search_writes_its_best_parameters(synthetic_root, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="needs hydra-optuna-sweeper (.[optuna])")
    import yaml

    common = ["-m", "hydra/sweeper=optuna_search", "hydra.sweeper.n_trials=3", f"dataset.root={synthetic_root}",
              "dataset.categories=[brick]", "dataset.val_ratio=0.3", "dataset.image_size=64", "dataset.num_workers=0",
              "trainer.enable_progress_bar=false", "eval.heatmaps_per_category=0",
              "eval.bootstrap_resamples=0"]  # fmt: skip
    search = ["experiment=onenip_quick", "method.max_epochs=1",
              "+hydra.sweeper.params={method.lr:'tag(log, interval(1e-5, 1e-3))'}"]  # fmt: skip
    run_module("anomaly_zoo.train", *common, *search, f"hydra.sweep.dir={tmp_path / 'onenip'}")
    best = yaml.safe_load((tmp_path / "onenip" / "optimization_results.yaml").read_text())
    trials = [json.loads(p.read_text()) for p in sorted((tmp_path / "onenip").glob("*/results.json"))]
    assert len(trials) == 3 and all(t["validation_loss"] is not None for t in trials)
    assert best["best_value"] == pytest.approx(min(t["validation_loss"] for t in trials))
    assert 1e-5 <= best["best_params"]["method.lr"] <= 1e-3
    # PatchKNN has no validation loss: the trial fails saying so, nothing is optimised against a stand-in
    failed = run_module("anomaly_zoo.train", *common, "hydra.sweeper.n_trials=1", "method=patch_knn",
                        "+hydra.sweeper.params={method.bank_size:'choice(64, 128)'}",
                        f"hydra.sweep.dir={tmp_path / 'knn'}", expect=1)  # fmt: skip
    assert "minimises the validation loss (val/loss), and method=patch_knn logged none" in failed.stderr
