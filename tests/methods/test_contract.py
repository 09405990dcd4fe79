"""The method contract: `score_batch` is how the framework calls every method's `predict_batch`."""

from __future__ import annotations

import numpy as np
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


class ViewAwareMethod(PathAwareMethod):
    def input_views(self):
        from anomaly_zoo.data.views import ImageView

        return {"big": ImageView(16, "bicubic")}

    def predict_batch(self, images, categories, paths=None, views=None):
        self.seen_views = views
        return super().predict_batch(images, categories, paths)


def test_input_views_reach_methods_that_declare_them_only():
    batch = {**_batch(), "views": {"big": torch.rand(3, 3, 16, 16)}}
    aware = ViewAwareMethod()
    aware.test_step(batch, 0)
    assert aware.seen_views is batch["views"] and aware.seen == ["x.png", "y.png", "z.png"]
    PathAwareMethod().test_step(batch, 0)  # a method without `views` is called as before
    assert TwoArgumentMethod().input_views() == {}


def test_symmetric_blur_border_equals_scipy_gaussian_filter():
    """border="symmetric" is scipy.ndimage.gaussian_filter's default mode (what the official DIVAD code calls)."""
    from scipy.ndimage import gaussian_filter

    from anomaly_zoo.methods.base import gaussian_blur

    rng = np.random.default_rng(0)
    for shape in ((64, 48), (9, 7)):  # the second is smaller than the radius (20): the reflection folds again
        m = rng.random(shape)
        ours = gaussian_blur(torch.from_numpy(m)[None], 5.0, "symmetric")[0].numpy()
        assert np.abs(ours - gaussian_filter(m, sigma=5)).max() < 1e-12
    m = rng.random((64, 48))
    whole_sample = gaussian_blur(torch.from_numpy(m)[None], 5.0)[0].numpy()  # the default stays torch's reflect
    assert np.abs(whole_sample - gaussian_filter(m, sigma=5, mode="mirror")).max() < 1e-12
