"""Human-facing outputs: tables and heatmap overlays."""

from anomaly_zoo.reporting.heatmaps import save_overlay
from anomaly_zoo.reporting.tables import metrics_table

__all__ = ["metrics_table", "save_overlay"]
