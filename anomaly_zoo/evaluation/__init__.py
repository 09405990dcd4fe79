"""Shared evaluation: collect maps per category, run the metric suite, write results."""

from anomaly_zoo.evaluation.collector import EvaluationCollector, PredictionBuffer
from anomaly_zoo.evaluation.results import write_results

__all__ = ["EvaluationCollector", "PredictionBuffer", "write_results"]
