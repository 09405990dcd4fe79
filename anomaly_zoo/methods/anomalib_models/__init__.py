"""anomalib's model zoo behind one adapter: `method=anomalib model=<name>` (presets: method=patchcore, method=padim)."""

from anomaly_zoo.methods.anomalib_models.backbone_bridge import AnomalibModelError
from anomaly_zoo.methods.anomalib_models.lightning_model import AnomalibMethod
from anomaly_zoo.methods.anomalib_models.registry import UnknownAnomalibModelError, available_models, model_class

__all__ = ["AnomalibMethod", "AnomalibModelError", "UnknownAnomalibModelError", "available_models", "model_class"]
