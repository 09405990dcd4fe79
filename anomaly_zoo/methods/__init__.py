"""Methods: each subclasses `AnomalyMethod` and lives in its own folder."""

from anomaly_zoo.methods.base import AnomalyMethod, MethodOutput

__all__ = ["AnomalyMethod", "MethodOutput"]
