from anomaly_zoo.methods.divad.lightning_model import DIVAD
from anomaly_zoo.methods.divad.pipeline import DiffusionReconstructor, InversionSchedule, StableDiffusionParts

__all__ = ["DIVAD", "DiffusionReconstructor", "InversionSchedule", "StableDiffusionParts"]
