"""Ours vs the paper: a leaderboard CSV (from `python -m anomaly_zoo.leaderboard`) against a paper.csv.

    python experiments/compare_to_paper.py PAPER_CSV LEADERBOARD_CSV [--match KEY] [--paper-row NAME]

Rows are matched by the value of `KEY=<row>` in the leaderboard's run label (e.g. --match onenip_ablation), or
one paper row (--paper-row) is compared with every run. Prints, per metric the paper reports: ours, paper, difference.
"""

from __future__ import annotations

import argparse
import csv
import re


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paper")
    parser.add_argument("leaderboard")
    parser.add_argument("--match", default=None)
    parser.add_argument("--paper-row", default=None)
    args = parser.parse_args()
    with open(args.paper) as f:
        paper = {r["row"]: r for r in csv.DictReader(f)}
    with open(args.leaderboard) as f:
        ours = list(csv.DictReader(f))
    metrics = [k for k in next(iter(paper.values())) if k.startswith(("I-", "P-", "PRO"))]
    print("| run | " + " | ".join(f"{m} ours / paper / Δ" for m in metrics) + " |")
    print("|---|" + "---|" * len(metrics))
    for run in ours:
        if run["status"] != "ok":
            print(f"| {run['run']} | failed: {run['error']} |")
            continue
        if args.paper_row:
            row = paper[args.paper_row]
        else:
            found = re.search(rf"{re.escape(args.match)}=(\S+)", run["run"]) if args.match else None
            row = paper.get(found.group(1)) if found else None
        if row is None:
            continue
        cells = []
        for m in metrics:
            value = 100 * float(run[f"mean/{m}"])
            cells.append(f"{value:.1f} / {float(row[m]):.1f} / {value - float(row[m]):+.1f}")
        print(f"| {run['run']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
