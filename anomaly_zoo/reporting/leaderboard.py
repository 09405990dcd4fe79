"""Leaderboards: every results.json under some folders → per-dataset tables (Markdown, CSV, W&B)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from anomaly_zoo.config_keys import flatten, is_result_neutral, is_seed_key, result_relevant
from anomaly_zoo.metrics import METRIC_NAMES
from anomaly_zoo.metrics.bootstrap import DEFAULT_RESAMPLES, IMAGE_METRICS
from anomaly_zoo.metrics.pixel_bootstrap import PIXEL_METRICS
from anomaly_zoo.reporting.dataset_columns import blank_pixel_metrics, extra_columns, merge_dataset_metrics, scope_note
from anomaly_zoo.reporting.leaderboard_formats import (
    cost_table,
    defect_table,
    legend,
    metric_table,
    write_rows_csv,
    write_runs_csv,
)
from anomaly_zoo.reporting.leaderboard_html import write_html
from anomaly_zoo.reporting.rows import Row, group_rows, mark_ties


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
    #: results.json's per-image table, image-metric intervals, cost and per-defect view (older files: empty)
    images: dict[str, list] = field(default_factory=dict)
    intervals: dict[str, Any] | None = None
    cost: dict[str, Any] = field(default_factory=dict)
    per_defect: dict[str, Any] = field(default_factory=dict)
    #: a union's per-dataset means (results.json `datasets`: member label → {"dataset", "categories", "mean"})
    datasets: dict[str, Any] = field(default_factory=dict)
    #: results.json `pixel_metrics` ("all", or which categories have no masks: image metrics only there)
    pixel_metrics: str = "all"
    #: the columns results.json `dataset_metrics` added to `categories` and `mean` (SegF1, sPRO@0.05, S-AUROC, ...)
    dataset_columns: list[str] = field(default_factory=list)

    @property
    def scope(self) -> str:
        """The mark of a dataset without masks: "image metrics only [for <categories>]"; empty otherwise."""
        return scope_note(self.pixel_metrics, self.categories)


def read_run(path: Path) -> RunRecord:
    """One results.json as a leaderboard row; a file that is not JSON or not a run record is a ValueError."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"a JSON {type(data).__name__}, not a run record")
    categories, mean = data.get("categories", {}), data.get("mean", {})
    columns = merge_dataset_metrics(data.get("dataset_metrics"), categories, mean)
    pixel_metrics = str(data.get("pixel_metrics", "all"))
    blank_pixel_metrics(pixel_metrics, categories, mean)  # empty cells, whatever a writer put there
    return RunRecord(
        path=path,
        method=data.get("method", "?"),
        dataset=data.get("dataset", "?"),
        status=data.get("status", "ok"),
        error=data.get("error", ""),
        categories=categories,
        mean=mean,
        config=data.get("config", {}),
        flat=flatten(data.get("config", {})),
        protocol=str((data.get("evaluation") or {}).get("protocol", "exact")),
        images=data.get("images") or {},
        intervals=data.get("intervals"),
        cost=data.get("cost") or {},
        per_defect=data.get("per_defect") or {},
        datasets=data.get("datasets") or {},
        pixel_metrics=pixel_metrics,
        dataset_columns=columns,
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
    # (seeds are not part of a label: runs that differ only in them are one row, rows.py)
    keys = sorted({k for r in runs for k in (result_relevant(r.config) if r.config else r.flat)
                   if not is_result_neutral(k, r.flat.get("task_name")) and not is_seed_key(k)})  # fmt: skip
    shared = [k for k in keys if not k.startswith("method.") and varies(runs, k)]
    for method in {r.method for r in runs}:
        group = [r for r in runs if r.method == method]
        own = [k for k in keys if k.startswith("method.") and not k.startswith("method._target_") and varies(group, k)]
        for r in group:
            parts = [f"{k.removeprefix('method.')}={r.flat[k]}" for k in own + shared if r.flat.get(k) is not None]
            r.label = " ".join([r.method, *[p for p in parts if not p.startswith("name=")]])


def tables(runs: list[RunRecord]) -> list[tuple[str, str, list[RunRecord]]]:
    """(dataset, protocol, runs) per leaderboard table: numbers of two evaluation protocols never share a column."""
    keys = sorted({(r.dataset, r.protocol) for r in runs}, key=lambda k: (k[0], k[1] != "exact", k[1]))
    return [(d, p, [r for r in runs if (r.dataset, r.protocol) == (d, p)]) for d, p in keys]


def table_name(dataset: str, protocol: str) -> str:
    """leaderboard_<dataset> for the exact protocol, leaderboard_<dataset>_<protocol> for an official one."""
    return f"leaderboard_{dataset}" if protocol == "exact" else f"leaderboard_{dataset}_{protocol}"


def member_rows(rows: list[Row]) -> list[tuple[str, list[Row]]]:
    """A union's tables per member dataset: (label, rows whose runs carry that member's mean as theirs). Tie marks
    are the overall mean's only, so these rows have none."""
    members = list(dict.fromkeys(k for row in rows for r in row.runs for k in r.datasets))
    return [(m, [Row([replace(r, mean=(r.datasets.get(m) or {}).get("mean") or {}, intervals=None)
                      for r in row.runs]) for row in rows]) for m in members]  # fmt: skip


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


def dataset_metrics_line(plain: list[str], kinds: dict[str, list[str]]) -> str:
    """What the columns beyond the suite's seven are."""
    parts = [f"{', '.join(plain)}: the dataset's own metrics (anomaly_zoo/metrics/README.md)"] if plain else []
    if kinds:
        parts.append(f"{' and '.join(kinds)} anomalies scored apart, each with the normal images")
    return "Beyond the seven suite metrics: " + "; ".join(parts) + "."


def write_leaderboards(runs: list[RunRecord], out_dir: str | Path) -> list[Path]:
    """Per dataset and evaluation protocol: a Markdown file (means, per category, cost, per defect type), two CSVs
    (one line per run and seed; one per row with spreads, intervals and tie marks) and an HTML page (sortable, with
    heatmap thumbnails) plus one HTML page per category. Runs that differ only in their seed are one row."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for dataset, protocol, group in tables(runs):
        label_runs(group)
        rows = group_rows(group)
        resamples = max((int((r.intervals or {}).get("resamples", 0)) for r in group), default=0) or DEFAULT_RESAMPLES
        mark_ties(rows, resamples)
        categories = list(dict.fromkeys(c for r in group for c in r.categories))
        plain, kinds = extra_columns(group)  # the dataset's own metrics (results.json dataset_metrics)
        metrics, every = [*METRIC_NAMES, *plain], [*METRIC_NAMES, *plain, *(c for cols in kinds.values() for c in cols)]
        notes = [_protocol_line(protocol), *([dataset_metrics_line(plain, kinds)] if plain or kinds else [])]
        md = [f"# Leaderboard: {dataset}", "", f"{len(group)} runs in {len(rows)} rows. {legend(resamples)}",
              *notes, "", metric_table("mean over categories", rows, None, metrics)]  # fmt: skip
        members = member_rows(rows)
        for member, member_rows_ in members:  # a union: each member dataset's mean
            md += ["", metric_table(f"mean over {member}'s categories", member_rows_, None)]
        for kind, columns in kinds.items():  # MVTec LOCO's logical and structural rows
            md += ["", metric_table(f"{kind} anomalies (with the normal images): mean over categories", rows, None,
                                    columns, [c.split("/", 1)[1] for c in columns])]  # fmt: skip
        md += ["", cost_table(rows)]
        for c in categories:
            md += ["", metric_table(c, rows, c, metrics)]
        for c in categories:
            if (table := defect_table(rows, c)) is not None:
                md += ["", table]
        name = table_name(dataset, protocol)
        md_path, csv_path, rows_path = out / f"{name}.md", out / f"{name}.csv", out / f"{name}_rows.csv"
        md_path.write_text("\n".join(md) + "\n")
        write_runs_csv(csv_path, rows, categories, every, [m for m, _ in members])
        write_rows_csv(rows_path, rows, every)
        intro = [f"{len(group)} runs in {len(rows)} rows. {legend(resamples)}", *notes]
        pages = write_html(out / f"{name}.html", f"Leaderboard: {dataset}", intro, rows, categories, metrics, members)
        written += [md_path, csv_path, rows_path, *pages]
    return written


def wandb_table(group: list[RunRecord]) -> tuple[list[str], list[list[Any]], dict[str, float]]:
    """A table's W&B content: (columns, one row per seed group, best mean per metric over the rows that finished).

    The columns are those of the Markdown table: the suite's seven, the dataset's own metrics (MVTec AD 2's PRO@0.05
    and SegF1, Real-IAD's sample-level S-*, LOCO's `<kind>/<metric>`) and a union's `dataset:<label>/<metric>` means,
    each with its std over seeds; then the bootstrap intervals (image metrics; pixel metrics where computed) and the
    scope (image metrics only, no masks). An
    undefined value (a dataset without masks, a metric a run did not report) is an empty cell, never a number."""
    label_runs(group)
    rows = group_rows(group)  # runs that differ only in the seed: one row, mean and std over the seeds
    plain, kinds = extra_columns(group)
    metrics = [*METRIC_NAMES, *plain, *(c for cols in kinds.values() for c in cols)]
    members = member_rows(rows)  # a union: per member, the rows (in `rows`' order) with that member's means
    member_columns = [f"dataset:{member}/{m}" for member, _ in members for m in METRIC_NAMES]
    # the image metrics' intervals always (empty where not computed), the pixel metrics' where a run has them
    with_intervals = [*IMAGE_METRICS, *(m for m in PIXEL_METRICS if any(row.interval(m) for row in rows))]
    bounds_columns = [f"{m} {e}" for m in with_intervals for e in ("low", "high")]
    columns = ["run", "method", "status", "protocol", "seeds", "scope", *metrics, *member_columns,
               *[f"{m} std" for m in metrics], *bounds_columns]  # fmt: skip
    data: list[list[Any]] = []
    for i, row in enumerate(rows):
        bounds: list[float | None] = []
        for m in with_intervals:
            bounds += row.interval(m) or [None, None]
        member_cells = [member_rows_[i].mean(m) for _, member_rows_ in members for m in METRIC_NAMES]
        means, stds = [row.mean(m) for m in metrics], [row.std(m) for m in metrics]
        data.append([row.label, row.first.method, row.status, row.first.protocol, len(row.runs), row.scope,
                     *means, *member_cells, *stds, *bounds])  # fmt: skip
    best: dict[str, float] = {}
    for m in metrics:
        values = [v for v in (r.mean(m) for r in rows if r.status == "ok") if v is not None]
        if values:
            best[m] = max(values)
    return columns, data, best


def log_to_wandb(runs: list[RunRecord], project: str, entity: str | None, out_dir: str | Path) -> str:
    """One sortable `wandb.Table` per dataset and protocol (`wandb_table`) plus the best mean of each metric as
    summary values."""
    import wandb

    run = wandb.init(project=project, entity=entity, job_type="leaderboard", dir=str(out_dir), reinit=True)
    for dataset, protocol, group in tables(runs):
        name = table_name(dataset, protocol).removeprefix("leaderboard_")  # <dataset>[_<protocol>]
        columns, data, best = wandb_table(group)
        run.log({f"leaderboard/{name}": wandb.Table(columns=list[str | int](columns), data=data)})
        for metric, value in best.items():
            run.summary[f"{name}/best/{metric}"] = value
    run_dir = run.dir
    run.finish()
    return run_dir
