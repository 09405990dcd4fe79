"""anomalib's models through the adapter: equal to anomalib's own Engine, PatchCore end to end, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import timm
import torch
from omegaconf import open_dict
from sklearn.metrics import roc_auc_score

from anomaly_zoo.backbones import FeatureExtractor
from anomaly_zoo.backbones.offline_weights import load_efficientnet_lite0
from anomaly_zoo.checkpoints.read import read_checkpoint
from anomaly_zoo.methods.anomalib_models import AnomalibMethod, UnknownAnomalibModelError, model_class
from anomaly_zoo.methods.anomalib_models.backbone_bridge import AnomalibModelError
from anomaly_zoo.runner import run

SEED = 7


def _run(compose_cfg, overrides, out_dir, fit=True, config="train"):
    cfg = compose_cfg(config, [f"seed={SEED}", "eval.heatmaps_per_category=0", *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(out_dir)
    out = run(cfg, fit=fit)
    return json.loads(Path(out["results_path"]).read_text())


def _anomalib_padim_auroc(root: Path, category: str, tmp_path: Path) -> float:
    """PaDiM fitted and scored by anomalib's own Engine and datamodule; AUROC by scikit-learn from raw scores."""
    from anomalib.data import MVTecAD
    from anomalib.engine import Engine
    from anomalib.models import Padim
    from anomalib.pre_processing import PreProcessor
    from torchvision.transforms.v2 import Normalize

    pl.seed_everything(SEED)
    torch.manual_seed(SEED)
    tf_normalize = Normalize([127 / 255] * 3, [128 / 255] * 3)  # EfficientNet-Lite's input normalisation
    model = Padim(
        backbone="tf_efficientnet_lite0", layers=[2, 3], pre_trained=False, n_features=100,
        pre_processor=PreProcessor(transform=tf_normalize), post_processor=False, evaluator=False, visualizer=False,
    )  # fmt: skip
    weights = timm.create_model("tf_efficientnet_lite0", features_only=True, out_indices=(2, 3))
    load_efficientnet_lite0(weights)
    model.model.feature_extractor.feature_extractor.load_state_dict(weights.state_dict())
    datamodule = MVTecAD(root=root, category=category, train_batch_size=16, eval_batch_size=16, num_workers=0)
    engine = Engine(accelerator="cpu", devices=1, logger=False, default_root_dir=tmp_path, enable_progress_bar=False)
    engine.fit(model=model, datamodule=datamodule)
    predictions = engine.predict(model=model, datamodule=datamodule)
    scores = torch.cat([p.pred_score.reshape(-1) for p in predictions]).numpy()
    labels = torch.cat([p.gt_label.reshape(-1) for p in predictions]).numpy()
    assert len(labels) > 10 and 0 < labels.mean() < 1
    return float(roc_auc_score(labels, scores))


@pytest.mark.slow
def test_padim_through_the_adapter_equals_anomalibs_engine(compose_cfg, synthetic_root, tmp_path):
    ours = _run(
        compose_cfg,
        # 256 px is the generated size: neither side resizes, so both see the same pixels
        [
            "method=padim",
            "method.model.layers=[2,3]",
            "dataset.protocol=per_category",
            "dataset.category=brick",
            "dataset.image_size=256",
        ],
        tmp_path / "ours",
    )
    reference = _anomalib_padim_auroc(synthetic_root, "brick", tmp_path / "anomalib")
    assert ours["anomalib_model"] == "Padim" and ours["models_fitted"] == "one model per category"
    assert ours["categories"]["brick"]["I-AUROC"] == pytest.approx(reference, abs=1e-3)


@pytest.mark.slow
def test_patchcore_per_category_switch_end_to_end_and_reload(compose_cfg, tmp_path):
    fast = ["method=patchcore", "dataset.categories=[logo,brick]", "dataset.image_size=96",
            "method.model.coreset_sampling_ratio=0.05", "+method.model.precision=float32"]  # fmt: skip
    fitted = _run(compose_cfg, [*fast, "method.per_category=true"], tmp_path / "fit")
    assert fitted["models_fitted"] == "one model per category" and fitted["coreset"] == "anomalib"
    assert set(fitted["categories"]) == {"logo", "brick"}
    assert fitted["mean"]["P-AUROC"] > 0.8, "PatchCore with ImageNet features localises the synthetic defects"
    ckpt = tmp_path / "fit" / "checkpoints" / "last.ckpt"
    state = read_checkpoint(ckpt)
    assert state["anomalib_categories"] == ["logo", "brick"]
    banks = {k: v.shape for k, v in state["state_dict"].items() if k.endswith("model.memory_bank")}
    assert set(banks) == {"models.logo.model.memory_bank", "models.brick.model.memory_bank"}
    n_patches = 30 * (96 // 8) ** 2  # 30 training images per category, stride-8 grid
    assert all(shape[0] == int(n_patches * 0.05) for shape in banks.values()), "5 % of each category's patches"
    again = _run(compose_cfg, [*fast, "method.per_category=true", f"ckpt_path={ckpt}"], tmp_path / "t", False, "test")
    for category in ("logo", "brick"):
        assert again["categories"][category] == pytest.approx(fitted["categories"][category], abs=1e-6)

    unified = _run(compose_cfg, [*fast, "method.coreset=fast"], tmp_path / "unified")
    assert unified["models_fitted"] == "one model for all categories" and unified["coreset"] == "fast"
    assert unified["mean"]["P-AUROC"] > 0.8


def test_gradient_model_trains_and_logs_through_the_adapter(compose_cfg, tmp_path):
    res = _run(
        compose_cfg,
        ["method=anomalib", "model=stfpm", "dataset.categories=[logo]", "dataset.image_size=64",
         "trainer.limit_train_batches=2", "trainer.log_every_n_steps=1"],
        tmp_path,
    )  # fmt: skip
    assert res["method"] == "stfpm" and res["anomalib_model"] == "Stfpm"
    metrics = next((tmp_path).rglob("metrics.csv")).read_text()
    assert "train_loss" in metrics.splitlines()[0], "STFPM's own self.log reaches the framework's logger"


def test_unknown_model_lists_the_available_ones():
    with pytest.raises(UnknownAnomalibModelError) as err:
        model_class("patchcorr")
    assert "patchcore" in str(err.value) and "padim" in str(err.value) and "efficient_ad" in str(err.value)
    assert model_class("EfficientAd") is model_class("efficient_ad")


@pytest.fixture(scope="module")
def lite0() -> FeatureExtractor:
    return FeatureExtractor("efficientnet_lite0", "tf_efficientnet_lite0", [2, 3], "package", normalization="tf")


def test_framework_weights_reach_the_anomalib_backbone(lite0):
    method = AnomalibMethod({"name": "patchcore"}, backbone=lite0)
    extractor = method.models["_all_"].model.feature_extractor.feature_extractor
    reference = lite0.model.state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in extractor.state_dict().items())
    # STFPM asks for a pretrained teacher and a random student: only the teacher gets the weights.
    stfpm = AnomalibMethod({"name": "stfpm"}, backbone=lite0).models["_all_"].model
    teacher = stfpm.teacher_model.feature_extractor.state_dict()
    student = stfpm.student_model.feature_extractor.state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in teacher.items())
    assert not torch.equal(student["conv_stem.weight"], reference["conv_stem.weight"])


def test_bad_adapter_settings_are_named(lite0):
    with pytest.raises(ValueError, match="per_category"):
        AnomalibMethod({"name": "stfpm"}, backbone=lite0, per_category=True)
    with pytest.raises(AnomalibModelError, match="backbone="):
        AnomalibMethod({"name": "padim", "backbone": "resnet18"}, backbone=lite0, backbone_source="framework")
    # anomalib's own hub backbone, offline: a clear error naming the model, never random weights
    with pytest.raises(AnomalibModelError, match="Padim could not be built"):
        AnomalibMethod({"name": "padim", "backbone": "resnet18"}, backbone=lite0)
    with pytest.raises(TypeError, match="coreset_ratio"):
        AnomalibMethod({"name": "patchcore", "coreset_ratio": 0.1}, backbone=lite0)
    with pytest.raises(ValueError, match=r"method\.coreset=fast"):
        AnomalibMethod({"name": "padim", "n_features": 10}, backbone=lite0, coreset="fast")
    with pytest.raises(UnknownAnomalibModelError, match="model=<name>"):
        AnomalibMethod({"name": None}, backbone=lite0)
