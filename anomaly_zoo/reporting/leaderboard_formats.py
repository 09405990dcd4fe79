"""How leaderboard rows are written: Markdown (metrics, cost, per defect type) and CSV (one line per run and seed,
and one per row with its spread, interval, tie mark and p-values)."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from anomaly_zoo.metrics import METRIC_NAMES
from anomaly_zoo.metrics.bootstrap import IMAGE_METRICS
from anomaly_zoo.reporting.rows import ALPHA, Row

TIE = "≈"
COST_COLUMNS = ("fit_s", "test_images_per_s", "peak_host_memory_bytes", "peak_gpu_memory_bytes",
                "parameters_trainable", "parameters_total", "device", "precision")  # fmt: skip


def legend(resamples: int) -> str:
    return (
        f"Values in %, best per column in bold; `{TIE}`: not significantly different from the best at the "
        f"{100 * ALPHA:.0f} % level (image metrics: paired bootstrap over the same test images, {resamples} stratified "
        "resamples, for single runs; Welch's t-test over the seeds for rows with several; DeLong's test for I-AUROC "
        "in the rows CSV). `[low, high]`: 95 % bootstrap interval of a single run; `± s (n)`: standard deviation "
        "over n seeds."
    )


def _fmt(value: float | None) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def cell_text(text: str, limit: int = 160) -> str:
    """One Markdown table cell: one line, no column separators (older results.json hold multi-line errors)."""
    line = " ".join(str(text).split()).replace("|", "/")
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _metric_cell(row: Row, metric: str, category: str | None, best: float | None) -> str:
    value = row.mean(metric, category)
    text = _fmt(value)
    if not text:
        return ""
    std, interval = row.std(metric, category), row.interval(metric, category)
    if std is not None:
        text += f" ± {100 * std:.1f} ({len(row.values(metric, category))})"
    elif interval:
        text += f" [{_fmt(interval[0])}, {_fmt(interval[1])}]"
    if row.status == "ok" and value == best:
        return f"**{text}**"
    return text + (f" {TIE}" if category is None and row.tie.get(metric) else "")


def status_text(row: Row) -> str:
    """The status cell: ok, ok (image metrics only) for a dataset without masks, or failed: <error>."""
    if row.status != "ok":
        return f"failed: {cell_text(row.first.error)}"
    return f"ok ({row.scope})" if row.scope else "ok"


def metric_table(title: str, rows: list[Row], category: str | None, metrics: Sequence[str] = METRIC_NAMES,
                 headers: Sequence[str] | None = None) -> str:  # fmt: skip
    """One Markdown table: a row per leaderboard row, a column per metric (`headers`: their titles)."""
    header = "| run | status | " + " | ".join(headers or metrics) + " |"
    lines = [f"### {title}", "", header, "|---|---|" + "---:|" * len(metrics)]
    ok = [r for r in rows if r.status == "ok"]
    best = {m: max((v for v in (r.mean(m, category) for r in ok) if v is not None), default=None) for m in metrics}
    for row in rows:
        cells = [_metric_cell(row, m, category, best[m]) for m in metrics]
        lines.append(f"| {row.label} | {status_text(row)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cost_value(row: Row, key: str) -> Any:
    """The mean over the row's runs (a number), or the first run's value (device, precision)."""
    values: list[Any] = [v for v in ((r.cost or {}).get(key) for r in row.runs) if v is not None]
    if not values:
        return None
    return sum(values) / len(values) if isinstance(values[0], int | float) else values[0]


def cost_table(rows: list[Row]) -> str:
    """Fit time, throughput, peak memory, parameters, device and precision (means over seeds)."""
    lines = ["### cost", "", "| run | seeds | fit (s) | test images/s | peak host memory (GiB) | peak GPU memory (GiB) "
             "| parameters trainable / total (M) | device | precision |",
             "|---|---:|---:|---:|---:|---:|---:|---|---|"]  # fmt: skip
    for row in rows:
        if row.status != "ok":
            continue
        c = {k: cost_value(row, k) for k in COST_COLUMNS}

        def num(v: Any, scale: float = 1.0, digits: int = 1) -> str:
            return "" if v is None else f"{v / scale:.{digits}f}"

        params = "" if c["parameters_total"] is None else (
            f"{num(c['parameters_trainable'], 1e6, 2)} / {num(c['parameters_total'], 1e6, 2)}")  # fmt: skip
        lines.append(f"| {row.label} | {len(row.runs)} | {num(c['fit_s'])} | {num(c['test_images_per_s'])} | "
                     f"{num(c['peak_host_memory_bytes'], 2**30, 2)} | {num(c['peak_gpu_memory_bytes'], 2**30, 2)} | "
                     f"{params} | {c['device'] or ''} | {c['precision'] or ''} |")  # fmt: skip
    return "\n".join(lines)


def defect_table(rows: list[Row], category: str) -> str | None:
    """Per defect type of one category: its image AUROC against the normals and its recall at the run's decision
    threshold (means over seeds); the threshold's false-alarm rate on the test normals."""
    ok = [r for r in rows if r.status == "ok" and category in (r.first.per_defect or {})]
    defects = list(dict.fromkeys(d for r in ok for run in r.runs
                                 for d in ((run.per_defect or {}).get(category, {}).get("defects") or {})))  # fmt: skip
    if not defects:
        return None

    def mean_of(row: Row, pick: Any) -> float | None:
        values = [pick((run.per_defect or {}).get(category, {})) for run in row.runs]
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values else None

    lines = [f"### {category}: per defect type (I-AUROC against the normals / recall at the decision threshold)", "",
             "| run | " + " | ".join(defects) + " | false alarms |",
             "|---|" + "---:|" * (len(defects) + 1)]  # fmt: skip
    for row in ok:
        cells = []
        for d in defects:
            auc = mean_of(row, lambda v, d=d: (v.get("defects") or {}).get(d, {}).get("I-AUROC"))
            recall = mean_of(row, lambda v, d=d: (v.get("defects") or {}).get(d, {}).get("recall"))
            cells.append(_fmt(auc) + ("" if recall is None else f" / {_fmt(recall)}"))
        far = mean_of(row, lambda v: v.get("false_alarm_rate"))
        lines.append(f"| {row.label} | " + " | ".join(cells) + f" | {_fmt(far)} |")
    return "\n".join(lines)


def write_runs_csv(path: Path, rows: list[Row], categories: list[str], metrics: Sequence[str] = METRIC_NAMES,
                   members: Sequence[str] = ()) -> None:  # fmt: skip
    """One line per run (each seed its own): every metric per category (a union: and per member dataset,
    `dataset:<label>/<metric>`), its row's label, seed and cost; `pixel_metrics` as results.json says it ("all", or
    "none...": image metrics only, pixel cells empty)."""
    columns = [f"mean/{m}" for m in metrics] + [f"dataset:{d}/{m}" for d in members for m in METRIC_NAMES]
    columns += [f"{c}/{m}" for c in categories for m in metrics]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["run", "method", "status", "error", "results", "protocol", "pixel_metrics", "seed",
                         *columns, *[f"cost/{k}" for k in COST_COLUMNS]])  # fmt: skip
        for row in rows:
            for r in row.runs:
                values = [r.mean.get(m) for m in metrics]
                values += [((r.datasets.get(d) or {}).get("mean") or {}).get(m) for d in members for m in METRIC_NAMES]
                values += [r.categories.get(c, {}).get(m) for c in categories for m in metrics]
                cost = [(r.cost or {}).get(k) for k in COST_COLUMNS]
                writer.writerow([r.label, r.method, r.status, r.error, str(r.path), r.protocol,
                                 r.pixel_metrics, r.flat.get("seed"),
                                 *["" if v is None else v for v in values + cost]])  # fmt: skip


def write_rows_csv(path: Path, rows: list[Row], metrics: Sequence[str] = METRIC_NAMES) -> None:
    """One line per row: per metric the mean over seeds, their std and count, the single run's interval, the tie
    mark and p-value against the best (image metrics), DeLong's p for I-AUROC; `scope`: "image metrics only" where
    the dataset has no masks."""
    header = ["run", "method", "status", "scope", "seeds", "n"]
    for m in metrics:
        header += [f"mean/{m}", f"mean/{m} std", f"mean/{m} low", f"mean/{m} high"]
        if m in IMAGE_METRICS:
            header += [f"mean/{m} tied with best", f"mean/{m} p vs best"]
    header.append("mean/I-AUROC DeLong p vs best")
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for row in rows:
            line: list[Any] = [row.label, row.first.method, row.status, row.scope, " ".join(map(str, row.seeds)),
                               len(row.runs)]  # fmt: skip
            for m in metrics:
                interval = row.interval(m)
                line += [row.mean(m), row.std(m), *(interval if interval else (None, None))]
                if m in IMAGE_METRICS:
                    line += [row.tie.get(m), row.p_value.get(m)]
            line.append(row.delong)
            writer.writerow(["" if v is None else v for v in line])
