"""Leaderboard rows: runs that differ only in their seed form one row (mean ± std over seeds), and the rows that are
not significantly different from the best of a column are marked as tied with it.

Significance, image metrics only (they are what results.json keeps per image): two single-run rows that scored the
same test images are compared by a paired bootstrap over those images (the same stratified resamples for both,
`metrics/bootstrap.py`), with DeLong's test for I-AUROC as a cross-check (its p-value goes into the CSV); two rows
with several seeds each by Welch's t-test over the per-seed values. Other pairs get no mark.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from anomaly_zoo.config_keys import is_seed_key, seedless_key
from anomaly_zoo.metrics.bootstrap import DEFAULT_RESAMPLES, IMAGE_METRICS, delong_p, paired_bootstrap_p

#: the level below which a difference to the best row counts as significant
ALPHA = 0.05


@dataclass
class Row:
    """One leaderboard row: the runs of one config, one per seed (a failed run is a row of its own)."""

    runs: list[Any]  # RunRecord
    tie: dict[str, bool] = field(default_factory=dict)  # metric → not significantly different from the best
    p_value: dict[str, float] = field(default_factory=dict)  # metric → p against the best row
    delong: float | None = None  # DeLong's p for I-AUROC against the best row

    @property
    def first(self) -> Any:
        return self.runs[0]

    @property
    def label(self) -> str:
        return self.first.label

    @property
    def status(self) -> str:
        return self.first.status

    @property
    def scope(self) -> str:
        """The runs' mark of a dataset without masks (RunRecord.scope): "image metrics only ..." or empty."""
        return str(self.first.scope)

    @property
    def seeds(self) -> list[Any]:
        return [r.flat.get("seed") for r in self.runs]

    def values(self, metric: str, category: str | None = None) -> list[float]:
        """The metric of each seed's run (mean over categories, or one category's)."""
        rows = [r.mean if category is None else r.categories.get(category, {}) for r in self.runs]
        return [float(v) for v in (row.get(metric) for row in rows) if v is not None and not math.isnan(float(v))]

    def mean(self, metric: str, category: str | None = None) -> float | None:
        values = self.values(metric, category)
        return float(np.mean(values)) if values else None

    def std(self, metric: str, category: str | None = None) -> float | None:
        values = self.values(metric, category)
        return float(np.std(values, ddof=1)) if len(values) > 1 else None

    def interval(self, metric: str, category: str | None = None) -> list[float] | None:
        """The bootstrap interval results.json holds (single-run rows)."""
        if len(self.runs) != 1 or not self.first.intervals:
            return None
        block = (
            self.first.intervals.get("mean") if category is None else self.first.intervals["categories"].get(category)
        )
        return (block or {}).get(metric)


def group_rows(runs: list[Any]) -> list[Row]:
    """Rows in the order of their first run; runs of one row differ only in seed keys (and result-neutral keys)."""
    groups: dict[str, list[Any]] = {}
    for i, run in enumerate(runs):
        if run.status != "ok":
            groups[f"failed:{i}"] = [run]
            continue
        config = seedless_key(run.config) if run.config else json.dumps(
            {k: v for k, v in run.flat.items() if not is_seed_key(k)}, sort_keys=True, default=str)  # fmt: skip
        key = json.dumps([run.method, run.dataset, run.protocol, config])
        groups.setdefault(key, []).append(run)
    rows = [Row(sorted(members, key=lambda r: str(r.flat.get("seed")))) for members in groups.values()]
    return rows


def _paired(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]] | None:
    """Scores of two runs on the same test images (matched by path), with the labels and categories; None when they
    did not score the same images."""
    ia, ib = a.images or {}, b.images or {}
    if not ia.get("path") or sorted(ia["path"]) != sorted(ib.get("path") or []):
        return None
    order_b = {p: i for i, p in enumerate(ib["path"])}
    take = np.array([order_b[p] for p in ia["path"]])
    return (np.asarray(ia["score"], dtype=np.float64), np.asarray(ib["score"], dtype=np.float64)[take],
            np.asarray(ia["label"]), list(ia["category"]))  # fmt: skip


def _welch_p(a: list[float], b: list[float]) -> float | None:
    if len(a) < 2 or len(b) < 2:
        return None
    from scipy.stats import ttest_ind

    if np.std(a) == 0 and np.std(b) == 0:
        return 1.0 if np.mean(a) == np.mean(b) else 0.0
    return float(ttest_ind(a, b, equal_var=False).pvalue)


def mark_ties(rows: list[Row], resamples: int = DEFAULT_RESAMPLES) -> None:
    """For each image metric: the best row (highest mean) and every row not significantly different from it."""
    ok = [r for r in rows if r.status == "ok"]
    for metric in IMAGE_METRICS:
        scored = [r for r in ok if r.mean(metric) is not None]
        if len(scored) < 2:
            continue
        best = max(scored, key=lambda r: r.mean(metric) or 0.0)
        for row in scored:
            if row is best:
                continue
            p = None
            if len(row.runs) == 1 and len(best.runs) == 1:
                paired = _paired(best.first, row.first)
                if paired is not None:
                    p = paired_bootstrap_p(*paired[:2], paired[2], paired[3], metric, resamples)
                    if metric == "I-AUROC":
                        row.delong = delong_p(*paired[:2], paired[2], paired[3])
            else:
                p = _welch_p(best.values(metric), row.values(metric))
            if p is not None and not math.isnan(p):
                row.p_value[metric] = p
                row.tie[metric] = p >= ALPHA
