from anomaly_zoo.methods.onenip.lightning_model import OneNIP
from anomaly_zoo.methods.onenip.torch_model import ReconstructionTransformer, Refiner

__all__ = ["OneNIP", "ReconstructionTransformer", "Refiner"]
