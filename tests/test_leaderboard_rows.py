"""Leaderboards a reviewer would trust, on hand-made results.json files: seeds aggregated into one row, tie marks from
paired tests on the same test images, intervals, cost columns, per-defect tables, older files with empty cells."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from anomaly_zoo.evaluation.per_image import per_defect
from anomaly_zoo.leaderboard import main
from anomaly_zoo.metrics.bootstrap import image_intervals
from anomaly_zoo.reporting.leaderboard import collect_runs, label_runs
from anomaly_zoo.reporting.rows import group_rows, mark_ties

N = 120  # test images: two categories of 60, 24 defective each
LABELS = np.r_[np.zeros(36), np.ones(24), np.zeros(36), np.ones(24)].astype(int)
CATS = ["a"] * 60 + ["b"] * 60
DEFECTS = [("good" if y == 0 else ("crack" if i % 2 else "hole")) for i, y in enumerate(LABELS)]


def write_run(folder: Path, method: str, seed: int, scores: np.ndarray, extra_config: dict | None = None,
              threshold: float | None = None) -> dict:  # fmt: skip
    from sklearn.metrics import average_precision_score, roc_auc_score

    cats = np.array(CATS)
    categories = {}
    for c in ("a", "b"):
        pick = cats == c
        categories[c] = {"I-AUROC": roc_auc_score(LABELS[pick], scores[pick]),
                         "I-AP": average_precision_score(LABELS[pick], scores[pick]), "PRO": 0.5}  # fmt: skip
    mean = {m: float(np.mean([categories[c][m] for c in categories])) for m in ("I-AUROC", "I-AP", "PRO")}
    images = {"path": [f"{c}/test/{d}/{i:03d}.png" for i, (c, d) in enumerate(zip(CATS, DEFECTS, strict=True))],
              "category": CATS, "label": LABELS.tolist(), "defect": DEFECTS, "score": scores.tolist()}  # fmt: skip
    payload = {
        "method": method, "dataset": "toy", "status": "ok", "categories": categories, "mean": mean,
        "config": {"method": {"name": method, **(extra_config or {})}, "seed": seed, "dataset": {"seed": seed}},
        "evaluation": {"protocol": "exact"}, "images": images,
        "intervals": image_intervals(scores, LABELS, CATS, 300, seed=seed),
        "per_defect": per_defect(images, threshold),
        "cost": {"fit_s": 10.0 + seed, "test_images_per_s": 50.0, "peak_host_memory_bytes": 2**31,
                 "parameters_trainable": 1_000_000, "parameters_total": 3_000_000, "device": "cpu",
                 "precision": "32-true"},
    }  # fmt: skip
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(payload))
    return payload


def scores_of(strength: float, seed: int, noise: float = 1.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(scale=noise, size=N) + strength * LABELS


@pytest.fixture
def board(tmp_path):
    root = tmp_path / "runs"
    write_run(root / "good_s1", "good", 1, scores_of(2.0, 1), threshold=1.0)
    write_run(root / "good_s2", "good", 2, scores_of(2.0, 2), threshold=1.0)
    base = scores_of(2.0, 10)
    write_run(root / "single", "single", 0, base)
    write_run(root / "jittered", "jittered", 0, base + np.random.default_rng(11).normal(scale=0.02, size=N))
    write_run(root / "weak", "weak", 0, scores_of(0.3, 12))
    return root


def test_runs_that_differ_only_in_the_seed_are_one_row(board, tmp_path):
    runs = collect_runs([board])
    label_runs(runs)
    rows = group_rows(runs)
    assert sorted(len(r.runs) for r in rows) == [1, 1, 1, 2]
    good = next(r for r in rows if r.first.method == "good")
    values = [json.loads((board / f"good_s{s}" / "results.json").read_text())["mean"]["I-AUROC"] for s in (1, 2)]
    assert good.mean("I-AUROC") == pytest.approx(np.mean(values))
    assert good.std("I-AUROC") == pytest.approx(np.std(values, ddof=1)) and good.seeds == [1, 2]
    main([str(board), f"out={tmp_path}"])
    per_run = list(csv.DictReader((tmp_path / "leaderboard_toy.csv").open()))
    assert len(per_run) == 5 and {r["seed"] for r in per_run if r["method"] == "good"} == {"1", "2"}  # per seed
    per_row = {r["method"]: r for r in csv.DictReader((tmp_path / "leaderboard_toy_rows.csv").open())}
    assert per_row["good"]["n"] == "2" and float(per_row["good"]["mean/I-AUROC std"]) == pytest.approx(
        good.std("I-AUROC")
    )
    md = (tmp_path / "leaderboard_toy.md").read_text()
    assert f"± {100 * good.std('I-AUROC'):.1f} (2)" in md


def test_ties_follow_paired_tests_on_the_same_images(board):
    runs = collect_runs([board])
    label_runs(runs)
    rows = {r.first.method: r for r in group_rows(runs)}
    singles = [rows["single"], rows["jittered"], rows["weak"]]
    mark_ties(singles, resamples=400)
    best = max(singles, key=lambda r: r.mean("I-AUROC"))
    other = rows["jittered"] if best is rows["single"] else rows["single"]
    assert other.tie["I-AUROC"] and other.p_value["I-AUROC"] >= 0.05  # the same detector, jittered: tied
    assert other.delong is not None and other.delong >= 0.05  # DeLong agrees
    assert not rows["weak"].tie["I-AUROC"] and rows["weak"].p_value["I-AUROC"] < 0.05
    assert rows["weak"].delong < 0.05


def test_markdown_shows_intervals_ties_cost_and_defect_types(board, tmp_path):
    main([str(board), f"out={tmp_path}"])
    md = (tmp_path / "leaderboard_toy.md").read_text()
    weak = json.loads((board / "weak" / "results.json").read_text())
    low, high = weak["intervals"]["mean"]["I-AUROC"]
    assert f"{100 * weak['mean']['I-AUROC']:.1f} [{100 * low:.1f}, {100 * high:.1f}]" in md
    assert "≈" in md and "paired bootstrap" in md  # the method is named
    assert "### cost" in md and "| good | 2 | 11.5 | 50.0 | 2.00 |" in md and "1.00 / 3.00 | cpu | 32-true |" in md
    assert "### a: per defect type" in md and "| hole | crack | false alarms |" in md
    good = [json.loads((board / f"good_s{s}" / "results.json").read_text()) for s in (1, 2)]
    recall = np.mean([g["per_defect"]["a"]["defects"]["crack"]["recall"] for g in good])
    auc = np.mean([g["per_defect"]["a"]["defects"]["crack"]["I-AUROC"] for g in good])
    assert f" | {100 * auc:.1f} / {100 * recall:.1f} | " in md.split("### a: per defect type")[1].split("| good |")[1]


def test_older_results_without_images_intervals_or_cost_still_load(tmp_path):
    old = {"method": "old", "dataset": "toy", "status": "ok", "categories": {"a": {"I-AUROC": 0.9}},
           "mean": {"I-AUROC": 0.9}, "config": {"method": {"name": "old"}, "seed": 1}}  # fmt: skip
    (tmp_path / "r1").mkdir()
    (tmp_path / "r1" / "results.json").write_text(json.dumps(old))
    (tmp_path / "r2").mkdir()
    (tmp_path / "r2" / "results.json").write_text(json.dumps({**old, "method": "other", "mean": {"I-AUROC": 0.8}}))
    main([str(tmp_path), f"out={tmp_path}"])
    rows = {r["method"]: r for r in csv.DictReader((tmp_path / "leaderboard_toy_rows.csv").open())}
    assert rows["other"]["mean/I-AUROC low"] == "" and rows["other"]["mean/I-AUROC tied with best"] == ""
    assert "| old | ok | **90.0** |" in (tmp_path / "leaderboard_toy.md").read_text()


CHROMIUM = __import__("shutil").which("chromium") or __import__("shutil").which("chromium-browser")


def _with_heatmaps(board: Path) -> None:
    from PIL import Image

    for run in ("single", "weak"):
        (board / run / "heatmaps").mkdir()
        for i in range(4):  # more than the page shows
            Image.new("RGB", (32, 16), (40 * i, 90, 160)).save(board / run / "heatmaps" / f"a_{i}.png")


def test_html_pages_hold_every_row_category_and_thumbnail(board, tmp_path):
    _with_heatmaps(board)
    main([str(board), f"out={tmp_path}"])
    page = (tmp_path / "leaderboard_toy.html").read_text()
    assert page.count("<tr class='ok'>") == 4 and "leaderboard_toy_a.html" in page and "leaderboard_toy_b.html" in page
    assert page.count("class='thumb'") == 2 * 3 and "runs/single/heatmaps/a_0.png" in page
    weak = json.loads((board / "weak" / "results.json").read_text())
    low, high = weak["intervals"]["mean"]["I-AUROC"]
    assert f"[{100 * low:.1f}, {100 * high:.1f}]" in page and "peak host memory bytes" in page
    assert (tmp_path / "leaderboard_toy_b.html").read_text().count("<tr class='ok'>") == 4


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (.ci/run installs it)")
def test_html_leaderboard_sorts_and_loads_its_thumbnails_in_headless_chromium(board, tmp_path):
    import re
    import subprocess

    _with_heatmaps(board)
    main([str(board), f"out={tmp_path}"])
    url = (tmp_path / "leaderboard_toy.html").as_uri() + "#sort=I-AP"
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
         "--virtual-time-budget=10000", "--enable-logging=stderr", "--dump-dom", url],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    assert 'data-images-loaded="6/6"' in dom and 'data-sorted="I-AP desc"' in dom, dom[-1500:]
    table = dom[dom.index("<tbody>") : dom.index("</tbody>")]
    order = re.findall(r"<tr class=\"ok\"><td data-value=\"([^\"]+)\"", table)
    runs = collect_runs([board])
    label_runs(runs)
    by_ap = sorted(group_rows(runs), key=lambda r: -(r.mean("I-AP") or 0))
    assert order == [r.label for r in by_ap]
    assert "Uncaught" not in proc.stderr
