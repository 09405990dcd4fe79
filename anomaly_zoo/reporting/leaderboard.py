"""Leaderboards: every results.json under some folders → per-dataset tables (Markdown, CSV, W&B)."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anomaly_zoo.config_keys import flatten, is_result_neutral, result_relevant
from anomaly_zoo.metrics import METRIC_NAMES


@dataclass
class RunRecord:
    path: Path
    method: str
    dataset: str
    status: str
    error: str
    categories: dict[str, dict[str, float | None]]
    mean: dict[str, float | None]
    config: dict[str, Any]
    label: str = ""
    flat: dict[str, Any] = field(default_factory=dict)
    #: the evaluation protocol its numbers come from (results.json `evaluation.protocol`; older files: exact)
    protocol: str = "exact"


def read_run(path: Path) -> RunRecord:
    """One results.json as a leaderboard row; a file that is not JSON or not a run record is a ValueError."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"a JSON {type(data).__name__}, not a run record")
    return RunRecord(
        path=path,
        method=data.get("method", "?"),
        dataset=data.get("dataset", "?"),
        status=data.get("status", "ok"),
        error=data.get("error", ""),
        categories=data.get("categories", {}),
        mean=data.get("mean", {}),
        config=data.get("config", {}),
        flat=flatten(data.get("config", {})),
        protocol=str((data.get("evaluation") or {}).get("protocol", "exact")),
    )


def collect_runs(folders: Iterable[str | Path], unreadable: list[str] | None = None) -> list[RunRecord]:
    """Every readable results.json below the folders. One that cannot be read (cut short by a full disk, edited by
    hand) does not hide the others: it is left out and, when `unreadable` is given, listed there as
    `<path>: <reason>`."""
    runs, paths = [], [Path(f) for f in folders]
    for folder in paths:
        if not folder.exists():
            raise FileNotFoundError(f"{folder}: no such folder")
        for path in sorted(folder.rglob("results.json")):
            try:
                runs.append(read_run(path))
            except (OSError, UnicodeDecodeError, ValueError) as err:  # JSONDecodeError is a ValueError
                if unreadable is not None:
                    unreadable.append(f"{path}: {type(err).__name__}: {' '.join(str(err).split())}")
    if not runs:
        bad = f" ({len(unreadable)} unreadable)" if unreadable else ""
        raise FileNotFoundError(f"no readable results.json found under {', '.join(map(str, paths))}{bad}")
    return runs


def label_runs(runs: list[RunRecord]) -> None:
    """Label = method + the config values that tell its runs apart in one table.

    `method.*` keys count when they differ between runs of the same method (keys that differ only because the
    methods differ add nothing to the method's name); other keys (dataset, trainer, ...) when they differ across the
    table and the run has them.
    """

    def varies(group: list[RunRecord], key: str) -> bool:
        return len({json.dumps(r.flat.get(key), default=str) for r in group}) > 1

    # the keys that tell runs apart are the ones that can change results (the same rule as run skipping)
    keys = sorted({k for r in runs for k in (result_relevant(r.config) if r.config else r.flat)
                   if not is_result_neutral(k, r.flat.get("task_name"))})  # fmt: skip
    shared = [k for k in keys if not k.startswith("method.") and varies(runs, k)]
    for method in {r.method for r in runs}:
        group = [r for r in runs if r.method == method]
        own = [k for k in keys if k.startswith("method.") and not k.startswith("method._target_") and varies(group, k)]
        for r in group:
            parts = [f"{k.removeprefix('method.')}={r.flat[k]}" for k in own + shared if r.flat.get(k) is not None]
            r.label = " ".join([r.method, *[p for p in parts if not p.startswith("name=")]])


def _fmt(value: float | None) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def _best(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def _cell(text: str, limit: int = 160) -> str:
    """One Markdown table cell: one line, no column separators (older results.json hold multi-line errors)."""
    line = " ".join(str(text).split()).replace("|", "/")
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _markdown(title: str, runs: list[RunRecord], rows_of: Any) -> str:
    header = "| run | status | " + " | ".join(METRIC_NAMES) + " |"
    lines = [f"### {title}", "", header, "|---|---|" + "---:|" * len(METRIC_NAMES)]
    best = {m: _best([rows_of(r).get(m) for r in runs if r.status == "ok"]) for m in METRIC_NAMES}
    for r in runs:
        cells = []
        for m in METRIC_NAMES:
            v = rows_of(r).get(m)
            text = _fmt(v)
            cells.append(f"**{text}**" if v is not None and v == best[m] and r.status == "ok" else text)
        status = r.status if r.status == "ok" else f"failed: {_cell(r.error)}"
        lines.append(f"| {r.label} | {status} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def tables(runs: list[RunRecord]) -> list[tuple[str, str, list[RunRecord]]]:
    """(dataset, protocol, runs) per leaderboard table: numbers of two evaluation protocols never share a column."""
    keys = sorted({(r.dataset, r.protocol) for r in runs}, key=lambda k: (k[0], k[1] != "exact", k[1]))
    return [(d, p, [r for r in runs if (r.dataset, r.protocol) == (d, p)]) for d, p in keys]


def table_name(dataset: str, protocol: str) -> str:
    """leaderboard_<dataset> for the exact protocol, leaderboard_<dataset>_<protocol> for an official one."""
    return f"leaderboard_{dataset}" if protocol == "exact" else f"leaderboard_{dataset}_{protocol}"


def _protocol_line(protocol: str) -> str:
    if protocol == "exact":
        return "Evaluation protocol: exact (the metric definitions; anomaly_zoo/metrics/README.md)."
    from anomaly_zoo.metrics.protocols import PROTOCOLS

    spec = PROTOCOLS.get(protocol)
    if spec is None:
        return f"Evaluation protocol: {protocol} (unknown to this version)."
    exact = f"; {', '.join(spec.exact_only)} by the exact definitions (not computed there)" if spec.exact_only else ""
    binned = ", binned PRO" if spec.binned_pro else ""
    return (f"Evaluation protocol: **{protocol}**, as {spec.source} computes it (AUROC < 0.5 flipped, labels from "
            f"masks{binned}){exact}. Not comparable with exact numbers.")  # fmt: skip


def write_leaderboards(runs: list[RunRecord], out_dir: str | Path) -> list[Path]:
    """One Markdown and one CSV file per dataset and evaluation protocol; best value per column in bold."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for dataset, protocol, group in tables(runs):
        label_runs(group)
        categories = list(dict.fromkeys(c for r in group for c in r.categories))
        md = [f"# Leaderboard: {dataset}", "", f"{len(group)} runs; values in %, best per column in bold.",
              _protocol_line(protocol), ""]  # fmt: skip
        md.append(_markdown("mean over categories", group, lambda r: r.mean))
        for c in categories:
            md += ["", _markdown(c, group, lambda r, c=c: r.categories.get(c, {}))]
        md_path = out / f"{table_name(dataset, protocol)}.md"
        md_path.write_text("\n".join(md) + "\n")
        csv_path = out / f"{table_name(dataset, protocol)}.csv"
        with csv_path.open("w", newline="") as f:
            writer = csv.writer(f)
            columns = [f"mean/{m}" for m in METRIC_NAMES] + [f"{c}/{m}" for c in categories for m in METRIC_NAMES]
            writer.writerow(["run", "method", "status", "error", "results", "protocol", *columns])
            for r in group:
                values = [r.mean.get(m) for m in METRIC_NAMES]
                values += [r.categories.get(c, {}).get(m) for c in categories for m in METRIC_NAMES]
                writer.writerow([r.label, r.method, r.status, r.error, str(r.path), r.protocol,
                                 *["" if v is None else v for v in values]])  # fmt: skip
        written += [md_path, csv_path]
    return written


def log_to_wandb(runs: list[RunRecord], project: str, entity: str | None, out_dir: str | Path) -> str:
    """One sortable `wandb.Table` per dataset and protocol plus the best mean of each metric as summary values."""
    import wandb

    run = wandb.init(project=project, entity=entity, job_type="leaderboard", dir=str(out_dir), reinit=True)
    for dataset, protocol, group in tables(runs):
        label_runs(group)
        name = table_name(dataset, protocol).removeprefix("leaderboard_")  # <dataset>[_<protocol>]
        table = wandb.Table(columns=["run", "method", "status", "protocol", *METRIC_NAMES])
        for r in group:
            table.add_data(r.label, r.method, r.status, r.protocol, *[r.mean.get(m) for m in METRIC_NAMES])
        run.log({f"leaderboard/{name}": table})
        for m in METRIC_NAMES:
            best = _best([r.mean.get(m) for r in group if r.status == "ok"])
            if best is not None:
                run.summary[f"{name}/best/{m}"] = best
    run_dir = run.dir
    run.finish()
    return run_dir
