"""The method contract: `score_batch` is how the framework calls every method's `predict_batch`."""

from __future__ import annotations

import pytest
import torch

from anomaly_zoo.methods.base import AnomalyMethod


class TwoArgumentMethod(AnomalyMethod):
    """Written against the contract before `paths` existed."""

    requires_training = False

    def predict_batch(self, images, categories):
        maps = images.mean(dim=1)
        return {"anomaly_maps": maps, "pred_scores": maps.flatten(1).amax(dim=1)}


class PathAwareMethod(AnomalyMethod):
    requires_training = False

    def predict_batch(self, images, categories, paths=None):
        self.seen = paths
        return {"anomaly_maps": images.mean(dim=1), "pred_scores": torch.arange(len(images), dtype=torch.float32)}


class WrongShapeMethod(TwoArgumentMethod):
    def predict_batch(self, images, categories):
        return {"anomaly_maps": images, "pred_scores": images.new_zeros(len(images))}


def _batch() -> dict:
    return {"image": torch.rand(3, 3, 8, 8), "category": ["a", "a", "b"], "path": ["x.png", "y.png", "z.png"]}


def test_methods_without_paths_keep_working_and_path_aware_ones_get_them():
    batch = _batch()
    out = TwoArgumentMethod().test_step(batch, 0)
    assert torch.equal(out["anomaly_maps"], batch["image"].mean(dim=1))
    aware = PathAwareMethod()
    aware.predict_step(batch, 0)
    assert aware.seen == ["x.png", "y.png", "z.png"]
    aware.score_batch(batch["image"], batch["category"])
    assert aware.seen is None


def test_wrong_output_shapes_are_named():
    with pytest.raises(RuntimeError, match=r"WrongShapeMethod.predict_batch must return anomaly_maps \(N,H,W\)"):
        WrongShapeMethod().score_batch(torch.rand(2, 3, 8, 8), ["a", "a"])
