"""Exact, fast metric suite shared by every method; `AnomalyMetrics` is the same suite as a torchmetrics Metric."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from anomaly_zoo.metrics.suite import METRIC_NAMES, compute_category_metrics, compute_metrics, mean_over_categories

if TYPE_CHECKING:
    from anomaly_zoo.metrics.torchmetric import AnomalyMetrics

__all__ = ["METRIC_NAMES", "AnomalyMetrics", "compute_category_metrics", "compute_metrics", "mean_over_categories"]


def __getattr__(name: str) -> Any:
    # Imported on first use: the suite itself needs only numpy and scipy, torch + torchmetrics take seconds to load.
    if name == "AnomalyMetrics":
        from anomaly_zoo.metrics.torchmetric import AnomalyMetrics

        return AnomalyMetrics
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
