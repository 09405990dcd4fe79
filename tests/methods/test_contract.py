"""The method contract: `score_batch` is how the framework calls every method's `predict_batch`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anomaly_zoo.methods.base import AnomalyMethod


class PathAwareMethod(AnomalyMethod):
    requires_training = False

    def predict_batch(self, images, categories, paths=None, views=None):
        self.seen, self.seen_views = paths, views
        return {"anomaly_maps": images.mean(dim=1), "pred_scores": torch.arange(len(images), dtype=torch.float32)}


class WrongShapeMethod(PathAwareMethod):
    def predict_batch(self, images, categories, paths=None, views=None):
        return {"anomaly_maps": images, "pred_scores": images.new_zeros(len(images))}


def _batch() -> dict:
    return {"image": torch.rand(3, 3, 8, 8), "category": ["a", "a", "b"], "path": ["x.png", "y.png", "z.png"]}


def test_paths_and_views_reach_every_method_and_are_none_on_direct_calls():
    batch = {**_batch(), "views": {"big": torch.rand(3, 3, 16, 16)}}
    aware = PathAwareMethod()
    out = aware.test_step(batch, 0)
    assert torch.equal(out["anomaly_maps"], batch["image"].mean(dim=1))
    assert aware.seen == ["x.png", "y.png", "z.png"] and aware.seen_views is batch["views"]
    aware.predict_step(_batch(), 0)
    assert aware.seen == ["x.png", "y.png", "z.png"] and aware.seen_views is None
    aware.score_batch(batch["image"], batch["category"])
    assert aware.seen is None and aware.seen_views is None
    assert aware.input_views() == {}


def test_a_predict_batch_without_the_full_signature_is_refused_when_the_class_is_defined():
    with pytest.raises(TypeError, match=r"OldStyle.predict_batch\(images, categories\) must take \(images, "
                                        r"categories, paths=None, views=None\)"):  # fmt: skip

        class OldStyle(AnomalyMethod):
            def predict_batch(self, images, categories):
                return {}


def test_wrong_output_shapes_are_named():
    with pytest.raises(RuntimeError, match=r"WrongShapeMethod.predict_batch must return anomaly_maps \(N,H,W\)"):
        WrongShapeMethod().score_batch(torch.rand(2, 3, 8, 8), ["a", "a"])


def test_needs_are_properties_and_data_comes_through_setup_hooks(synthetic_root):
    from anomaly_zoo.data import AnomalyDataModule

    method = PathAwareMethod()
    assert method.requires_training is False and method.trainer_arguments == {}
    with pytest.raises(RuntimeError, match=r"needs its training split: call method.setup_fit"):
        method.require_training_data()
    with pytest.raises(ValueError, match=r"expects dataset.normalization='none' .* the data is 'imagenet'"):
        method.check_normalization("imagenet")
    dm = AnomalyDataModule("synthetic", str(synthetic_root), categories=["logo"], image_size=32, num_workers=0)
    dm.setup("fit")
    context = dm.test_context()
    method.setup_test(context)  # the test context carries the training split of a run that indexed it
    assert method.require_training_data().dataset is dm.train_dataset and context.categories == ["logo"]
    assert context.root == dm.root and context.protocol == "unified"
    assert len(next(iter(context.test_batches()))["path"]) == min(dm.eval_batch_size, len(dm.test_dataset))


def test_symmetric_blur_border_equals_scipy_gaussian_filter():
    """border="symmetric" is scipy.ndimage.gaussian_filter's default mode (what the official DIVAD code calls)."""
    from scipy.ndimage import gaussian_filter

    from anomaly_zoo.methods.components import gaussian_blur

    rng = np.random.default_rng(0)
    for shape in ((64, 48), (9, 7)):  # the second is smaller than the radius (20): the reflection folds again
        m = rng.random(shape)
        ours = gaussian_blur(torch.from_numpy(m)[None], 5.0, "symmetric")[0].numpy()
        assert np.abs(ours - gaussian_filter(m, sigma=5)).max() < 1e-12
    m = rng.random((64, 48))
    whole_sample = gaussian_blur(torch.from_numpy(m)[None], 5.0)[0].numpy()  # the default stays torch's reflect
    assert np.abs(whole_sample - gaussian_filter(m, sigma=5, mode="mirror")).max() < 1e-12


def test_no_method_reads_the_datamodule():
    """The one door: methods get data through setup_fit / setup_test, never through `trainer.datamodule` (any
    attribute access or getattr of `datamodule` in a method module's code)."""
    import ast
    from pathlib import Path

    import anomaly_zoo.methods

    root = Path(anomaly_zoo.methods.__file__).parent
    offenders = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            attribute = isinstance(node, ast.Attribute) and node.attr == "datamodule"
            dynamic = isinstance(node, ast.Constant) and node.value == "datamodule"
            if attribute or dynamic:
                offenders.append(f"{path.relative_to(root)}:{node.lineno}")
    assert offenders == []
