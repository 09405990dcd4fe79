"""Datasets: one LightningDataModule over anomalib's layouts, plus the embedded synthetic set."""

from anomaly_zoo.data.datamodule import AnomalyDataModule
from anomaly_zoo.data.image_dataset import ImageReadError
from anomaly_zoo.data.registry import get_dataset_info
from anomaly_zoo.data.samples import DatasetLayoutError, Sample

__all__ = ["AnomalyDataModule", "DatasetLayoutError", "ImageReadError", "Sample", "get_dataset_info"]
