"""A training-free test method whose maps are a per-pixel function of the image alone.

Being elementwise, its output does not depend on how images are batched, which lets tests demand bit-exact
equality between single-process and data-parallel evaluation (a network's output may differ in the last bits
with the batch size).
"""

from __future__ import annotations

import torch

from anomaly_zoo.methods.base import AnomalyMethod, MethodOutput


class PixelDeviation(AnomalyMethod):
    requires_training = False  # a class attribute may stand in for the property

    def __init__(self, reference: float = 0.5) -> None:
        super().__init__()
        self.reference = reference

    def predict_batch(self, images: torch.Tensor, categories: list[str], paths=None, views=None) -> MethodOutput:
        maps = (images - self.reference).abs().mean(dim=1)
        return {"anomaly_maps": maps, "pred_scores": maps.flatten(1).amax(dim=1)}
