"""Ours vs the paper: a leaderboard CSV (from `python -m anomaly_zoo.leaderboard`) against a paper.csv.

    python experiments/compare_to_paper.py PAPER_CSV LEADERBOARD_CSV [--match KEY] [--paper-row NAME]

Rows are matched by `KEY=<row>`: a config group's option chosen on the command line (e.g. --match
method/onenip/ablation for `+method/onenip/ablation=<row>`, read from the run's `.hydra/overrides.yaml` next to its
results.json) or a value in the leaderboard's run label (e.g. --match alpha, --match dataset.image_size); or one
paper row (--paper-row) is compared with every run. Prints, per metric the paper reports: ours, paper, difference.
For one run per class (or an official test log) use `python -m anomaly_zoo.compare`, whose CSV reader this uses.
"""

from __future__ import annotations

import argparse
import csv
import re
from pathlib import Path

from anomaly_zoo.compare import read_paper_csv


def run_overrides(results_path: str) -> list[str]:
    """The Hydra overrides a run was started with (its `.hydra/overrides.yaml`); [] when not recorded."""
    path = Path(results_path).parent / ".hydra" / "overrides.yaml"
    if not results_path or not path.is_file():
        return []
    import yaml

    return [str(o) for o in yaml.safe_load(path.read_text()) or []]


def row_name(run: dict[str, str], key: str) -> str | None:
    """The value of `key` for one leaderboard row: a `[+|++]key=<value>` override of the run, else `key=<value>` in
    its label."""
    for override in run_overrides(run.get("results", "")):
        name, _, value = override.lstrip("+").partition("=")
        if name == key:
            return value
    found = re.search(rf"(?:^|\s){re.escape(key)}=(\S+)", run["run"])
    return found.group(1) if found else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paper")
    parser.add_argument("leaderboard")
    parser.add_argument("--match", default=None)
    parser.add_argument("--paper-row", default=None)
    args = parser.parse_args(argv)
    paper = read_paper_csv(args.paper).rows
    with open(args.leaderboard) as f:
        ours = list(csv.DictReader(f))
    metrics = list(next(iter(paper.values())))
    print("| run | " + " | ".join(f"{m} ours / paper / Δ" for m in metrics) + " |")
    print("|---|" + "---|" * len(metrics))
    for run in ours:
        if run["status"] != "ok":
            print(f"| {run['run']} | failed: {run['error']} |")
            continue
        if args.paper_row:
            row = paper[args.paper_row]
        else:
            found = row_name(run, args.match) if args.match else None
            row = paper.get(found) if found else None
        if row is None:
            continue
        cells = []
        for m in metrics:
            value = 100 * float(run[f"mean/{m}"])
            cells.append(f"{value:.1f} / {float(row[m]):.1f} / {value - float(row[m]):+.1f}")
        print(f"| {run['run']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
