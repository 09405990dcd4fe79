"""Leaderboards of issue #26's datasets, on hand-made results.json files: a dataset without masks is marked "image
metrics only" with empty pixel cells (never a number) in Markdown, CSV and HTML; a dataset's own metrics
(results.json `dataset_metrics`) are extra columns, MVTec LOCO's logical and structural rows tables of their own."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

import pytest

from anomaly_zoo.leaderboard import main
from anomaly_zoo.metrics import METRIC_NAMES

PIXEL = ("P-AUROC", "P-AP", "P-F1max", "PRO")
IMAGE = ("I-AUROC", "I-AP", "I-F1max")


def _row(base: float, pixel: float | None) -> dict[str, float | None]:
    return {**{m: base for m in IMAGE}, **{m: pixel for m in PIXEL}}


def _write(root: Path, name: str, dataset: str, categories: dict[str, dict], **extra: Any) -> None:
    mean = {m: sum(r[m] or 0.0 for r in categories.values()) / len(categories) for m in METRIC_NAMES}
    config = {"method": {"name": name}, "seed": 0}
    payload = {"method": name, "dataset": dataset, "status": "ok", "categories": categories, "mean": mean,
               "config": config, "evaluation": {"protocol": "exact"}, **extra}  # fmt: skip
    (root / name).mkdir(parents=True)
    (root / name / "results.json").write_text(json.dumps(payload))


def _md_table(text: str, title: str) -> dict[str, dict[str, str]]:
    """The Markdown table under `### title`: run → column → cell."""
    lines = text.split(f"### {title}\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    return {r[0]: dict(zip(header, r, strict=True)) for r in rows}


def _csv(path: Path) -> dict[str, dict[str, str]]:
    return {r["run"]: r for r in csv.DictReader(path.open())}


def test_datasets_without_masks_are_image_metrics_only_with_empty_pixel_cells(tmp_path):
    runs = tmp_path / "runs"
    # pixel numbers a writer should not have put there (0.0): the mark, not the value, decides
    _write(runs, "free", "bmad", {"Chest": _row(0.8, 0.0), "Brain": _row(0.6, 0.0)},
           pixel_metrics="none: bmad has no masks")  # fmt: skip
    _write(runs, "partial", "bmad", {"Chest": _row(0.7, None), "Brain": _row(0.9, 0.5)},
           pixel_metrics="none for Chest: bmad has no masks for them")  # fmt: skip
    _write(runs, "masked", "bmad", {"Chest": _row(0.5, 0.4), "Brain": _row(0.5, 0.3)}, pixel_metrics="all")
    main([str(runs), f"out={tmp_path}"])
    md = (tmp_path / "leaderboard_bmad.md").read_text()
    mean, chest, brain = (_md_table(md, t) for t in ("mean over categories", "Chest", "Brain"))
    assert mean["free"]["status"] == chest["free"]["status"] == "ok (image metrics only)"
    assert mean["partial"]["status"] == "ok (image metrics only for Chest)" and mean["masked"]["status"] == "ok"
    for table, image_auroc in ((mean, "70.0"), (chest, "**80.0**"), (brain, "60.0")):
        assert all(table["free"][m] == "" for m in PIXEL) and table["free"]["I-AUROC"] == image_auroc
    assert all(chest["partial"][m] == "" for m in PIXEL) and brain["partial"]["P-AUROC"].strip("*") == "50.0"
    assert mean["partial"]["P-AUROC"].strip("*") == "25.0"  # the writer's mean stands where some categories have masks
    runs_csv, rows_csv = _csv(tmp_path / "leaderboard_bmad.csv"), _csv(tmp_path / "leaderboard_bmad_rows.csv")
    assert (
        runs_csv["free"]["pixel_metrics"] == "none: bmad has no masks" and runs_csv["masked"]["pixel_metrics"] == "all"
    )
    assert all(runs_csv["free"][f"{c}/{m}"] == "" for c in ("mean", "Chest", "Brain") for m in PIXEL)
    assert runs_csv["free"]["Chest/I-AUROC"] == "0.8" and runs_csv["partial"]["Brain/PRO"] == "0.5"
    assert rows_csv["free"]["scope"] == "image metrics only" and rows_csv["masked"]["scope"] == ""
    assert all(rows_csv["free"][f"mean/{m}"] == "" for m in PIXEL)
    page = (tmp_path / "leaderboard_bmad.html").read_text()
    free = re.search(r"<tr class='ok'><td data-value='free'>(.*?)</tr>", page)
    assert free is not None and "(image metrics only)" in free.group(1)
    cells = re.findall(r"<td[^>]*data-value='([^']*)'", free.group(0))
    assert cells[2:2 + len(METRIC_NAMES)] == ["0.7", "0.7", "0.7", "", "", "", ""]  # fmt: skip


def _loco_block(value: float) -> dict[str, Any]:
    rows = {c: {"sPRO@0.05": value} for c in ("breakfast_box", "juice_bottle")}
    kind = {"categories": {c: {**_row(value, value), "sPRO@0.05": value} for c in rows},
            "mean": {**_row(value, value), "sPRO@0.05": value}}  # fmt: skip
    return {"categories": rows, "mean": {"sPRO@0.05": value}, "metrics": ["sPRO@0.05"],
            "by_anomaly_kind": {"logical": kind, "structural": kind}}  # fmt: skip


def test_dataset_metrics_are_extra_columns(tmp_path):
    runs = tmp_path / "runs"
    cats = {"breakfast_box": _row(0.9, 0.8), "juice_bottle": _row(0.7, 0.6)}
    _write(runs, "strong", "mvtec_loco", cats, dataset_metrics=_loco_block(0.75))
    _write(runs, "weak", "mvtec_loco", cats, dataset_metrics=_loco_block(0.25))
    _write(runs, "older", "mvtec_loco", cats)  # written before dataset metrics: empty cells
    ad2 = {
        "categories": {"can": {"PRO@0.05": 0.4, "SegF1": 0.3}},
        "mean": {"PRO@0.05": 0.4, "SegF1": 0.3},
        "metrics": ["PRO@0.05", "SegF1"],
        "segf1_threshold": {"can": {"value": 0.1, "rule": "mean_std", "k": 3.0}},
    }
    _write(runs, "ad2", "mvtec_ad2", {"can": _row(0.9, 0.8)}, dataset_metrics=ad2)
    sample = {
        "categories": {"audiojack": {"S-AUROC": 0.95, "S-AP": 0.9, "S-F1max": 0.85}},
        "mean": {"S-AUROC": 0.95, "S-AP": 0.9, "S-F1max": 0.85},
        "metrics": ["S-AUROC", "S-AP", "S-F1max"],
    }
    _write(runs, "iad", "realiad", {"audiojack": _row(0.9, 0.8)}, dataset_metrics=sample)
    main([str(runs), f"out={tmp_path}"])

    md = (tmp_path / "leaderboard_mvtec_loco.md").read_text()
    mean = _md_table(md, "mean over categories")
    assert list(mean["strong"])[-1] == "sPRO@0.05"
    assert (mean["strong"]["sPRO@0.05"], mean["weak"]["sPRO@0.05"], mean["older"]["sPRO@0.05"]) == (
        "**75.0**",
        "25.0",
        "",
    )
    assert _md_table(md, "juice_bottle")["weak"]["sPRO@0.05"] == "25.0"
    logical = _md_table(md, "logical anomalies (with the normal images): mean over categories")
    assert list(logical["strong"])[2:] == [*METRIC_NAMES, "sPRO@0.05"] and logical["weak"]["P-AUROC"] == "25.0"
    assert "structural anomalies (with the normal images)" in md and "Beyond the seven suite metrics: sPRO@0.05" in md
    runs_csv = _csv(tmp_path / "leaderboard_mvtec_loco.csv")
    assert runs_csv["strong"]["mean/sPRO@0.05"] == "0.75" and runs_csv["older"]["mean/sPRO@0.05"] == ""
    assert runs_csv["weak"]["breakfast_box/structural/sPRO@0.05"] == "0.25"
    assert runs_csv["strong"]["mean/logical/I-AUROC"] == "0.75"
    assert _csv(tmp_path / "leaderboard_mvtec_loco_rows.csv")["weak"]["mean/sPRO@0.05"] == "0.25"
    assert "<th data-key='sPRO@0.05'>" in (tmp_path / "leaderboard_mvtec_loco.html").read_text()

    ad2_mean = _md_table((tmp_path / "leaderboard_mvtec_ad2.md").read_text(), "mean over categories")["ad2"]
    assert (ad2_mean["PRO@0.05"], ad2_mean["SegF1"]) == ("**40.0**", "**30.0**")
    iad = _csv(tmp_path / "leaderboard_realiad.csv")["iad"]
    assert (iad["mean/S-AUROC"], iad["audiojack/S-AP"], iad["mean/S-F1max"]) == ("0.95", "0.9", "0.85")
    assert "S-AUROC" not in (tmp_path / "leaderboard_mvtec_ad2.md").read_text()  # columns per dataset


def test_wandb_tables_carry_the_dataset_columns_and_empty_pixel_cells(tmp_path, monkeypatch):
    from anomaly_zoo.reporting.leaderboard import collect_runs, log_to_wandb, tables, wandb_table

    runs = tmp_path / "runs"
    cats = {"breakfast_box": _row(0.9, 0.8), "juice_bottle": _row(0.7, 0.6)}
    _write(runs, "strong", "mvtec_loco", cats, dataset_metrics=_loco_block(0.75))
    _write(runs, "older", "mvtec_loco", cats)  # no dataset metrics: empty cells, no made-up number
    _write(runs, "free", "bmad", {"Chest": _row(0.8, 0.0)}, pixel_metrics="none: bmad has no masks")
    by_dataset = {d: wandb_table(group) for d, _, group in tables(collect_runs([runs]))}

    columns, data, best = by_dataset["mvtec_loco"]
    rows = {r[0]: dict(zip(columns, r, strict=True)) for r in data}
    extra = ["sPRO@0.05", "logical/sPRO@0.05", "structural/P-AP"]
    assert all(c in columns and f"{c} std" in columns for c in extra)
    assert rows["strong"]["sPRO@0.05"] == 0.75 and rows["strong"]["logical/I-AUROC"] == 0.75
    assert rows["older"]["sPRO@0.05"] is None and rows["older"]["I-AUROC"] == 0.8
    assert best["sPRO@0.05"] == 0.75 and best["I-AUROC"] == 0.8
    columns, data, best = by_dataset["bmad"]
    free = dict(zip(columns, data[0], strict=True))
    assert free["scope"] == "image metrics only" and all(free[m] is None for m in PIXEL) and free["I-AUROC"] == 0.8
    assert "P-AP" not in best  # a dataset without masks has no best pixel value

    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    log_to_wandb(collect_runs([runs]), "anomaly_zoo_test", None, tmp_path)  # None cells are accepted
    assert list((tmp_path / "wandb").glob("offline-run-*"))


def test_wandb_tables_of_a_union_have_the_member_means(tmp_path):
    from anomaly_zoo.reporting.leaderboard import collect_runs, tables, wandb_table

    runs = tmp_path / "runs"
    members = {"mvtec": {"dataset": "mvtec", "categories": ["bottle"], "mean": _row(0.9, 0.8)},
               "visa": {"dataset": "visa", "categories": ["candle"], "mean": _row(0.5, 0.4)}}  # fmt: skip
    intervals = {"mean": {"I-AUROC": [0.6, 0.8], "P-AP": [0.5, 0.7]}, "categories": {}, "resamples": 200}
    _write(runs, "u", "union", {"bottle": _row(0.9, 0.8), "candle": _row(0.5, 0.4)}, datasets=members,
           intervals=intervals)  # fmt: skip
    [(_, _, group)] = tables(collect_runs([runs]))
    columns, [row], _ = wandb_table(group)
    cells = dict(zip(columns, row, strict=True))
    assert cells["dataset:mvtec/I-AUROC"] == 0.9 and cells["dataset:visa/P-AP"] == 0.4 and cells["I-AUROC"] == 0.7
    assert (cells["I-AUROC low"], cells["P-AP high"], cells["I-AP low"]) == (0.6, 0.7, None)
    assert "PRO low" not in cells  # pixel intervals only where a run has them
