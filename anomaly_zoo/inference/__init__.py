"""Running a fitted (or training-free) method on a folder of new images."""

from anomaly_zoo.inference.folder_predictor import IMAGE_EXTENSIONS, PredictionRow, find_images, predict_folder

__all__ = ["IMAGE_EXTENSIONS", "PredictionRow", "find_images", "predict_folder"]
