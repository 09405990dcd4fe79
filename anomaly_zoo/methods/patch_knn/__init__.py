from anomaly_zoo.methods.patch_knn.lightning_model import PatchKNN
from anomaly_zoo.methods.patch_knn.torch_model import PatchKNNModel

__all__ = ["PatchKNN", "PatchKNNModel"]
