"""Exact, fast metric suite shared by every method."""

from anomaly_zoo.metrics.suite import METRIC_NAMES, compute_category_metrics, compute_metrics, mean_over_categories

__all__ = ["METRIC_NAMES", "compute_category_metrics", "compute_metrics", "mean_over_categories"]
