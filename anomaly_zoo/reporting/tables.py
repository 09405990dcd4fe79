"""Per-category metric tables as Markdown (printed at the end of every run)."""

from __future__ import annotations

import math
from collections.abc import Mapping

from anomaly_zoo.metrics import METRIC_NAMES


def _cell(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def metrics_table(
    per_category: Mapping[str, Mapping[str, float | None]], mean: Mapping[str, float], label: str = "category"
) -> str:
    """Markdown table, values in percent, one row per category (or per dataset: `label`) and a final mean row."""
    header = f"| {label} | " + " | ".join(METRIC_NAMES) + " |"
    rule = "|---|" + "---:|" * len(METRIC_NAMES)
    rows = [f"| {c} | " + " | ".join(_cell(r.get(m)) for m in METRIC_NAMES) + " |" for c, r in per_category.items()]
    rows.append("| **mean** | " + " | ".join(f"**{_cell(mean.get(m))}**" for m in METRIC_NAMES) + " |")
    return "\n".join([header, rule, *rows])
