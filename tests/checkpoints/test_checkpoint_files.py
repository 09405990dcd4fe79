"""Checkpoint files of every supported format load, nothing is silently wrong, converted files stand alone (issue 25).

Every file is written by the test: official-layout state dicts (tests/methods/onenip/official_keys, random tensors)
in the official code's two save formats, a bare state dict, and conversions of them.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from anomaly_zoo.backbones import FeatureExtractor
from anomaly_zoo.checkpoints import model as ckpt_model
from anomaly_zoo.checkpoints.model import CheckpointMismatchError, adopt_checkpoint_model, load_checkpoint_weights
from anomaly_zoo.checkpoints.read import CheckpointError, read_checkpoint
from anomaly_zoo.methods.onenip.torch_model import reconstruction_error_map
from tests.conftest import CONF_DIR
from tests.helpers.cli import run_module
from tests.methods.onenip.test_official_checkpoint import framework_model, official_state


class _EasyDict(dict):
    """Stand-in for easydict.EasyDict (not installed): a dict whose items are also attributes, nested dicts too."""

    def __init__(self, d=None):
        super().__init__()
        for k, v in (d or {}).items():
            setattr(self, k, v)

    def __setattr__(self, name, value):
        if isinstance(value, dict) and not isinstance(value, _EasyDict):
            value = _EasyDict(value)
        elif isinstance(value, list):
            value = [_EasyDict(x) if isinstance(x, dict) else x for x in value]
        super().__setattr__(name, value)
        super().__setitem__(name, value)


NET = [{"name": "backbone", "type": "models.backbones.efficientnet_b4", "frozen": True,
        "kwargs": {"pretrained": True, "outlayers": [1, 2, 3, 4]}},
       {"name": "neck", "prev": "backbone", "kwargs": {"outstrides": [16]}},
       {"name": "reconstruction", "kwargs": {"hidden_dim": 256, "feature_size": [14, 14], "dropout": 0.1}}]  # fmt: skip


def save_full_format(path: Path, state: dict[str, torch.Tensor], monkeypatch) -> None:
    """{"epoch", "arch": config.net (EasyDicts), "state_dict", "best_metric" (np.float64), "optimizer"} as the
    official save_checkpoint writes with its commented-out lines restored; easydict exists only while saving."""
    module = types.ModuleType("easydict")
    _EasyDict.__module__, _EasyDict.__qualname__ = "easydict", "EasyDict"
    module.EasyDict = _EasyDict  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "easydict", module)
    net = _EasyDict({"net": NET}).net
    assert type(net[0]) is _EasyDict and type(net[0].kwargs) is _EasyDict
    layer = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=1e-4)
    layer(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    torch.save({"epoch": 1000, "arch": net, "state_dict": state, "best_metric": np.mean([95.0, 95.2]),
                "optimizer": optimizer.state_dict()}, path)  # fmt: skip
    monkeypatch.delitem(sys.modules, "easydict")  # reading must not need it


def test_full_save_format_loads_without_running_code_from_the_file(tmp_path, monkeypatch):
    state = official_state("uniad")
    path = tmp_path / "ckpt.pth.tar"
    save_full_format(path, state, monkeypatch)
    with pytest.raises(Exception, match="easydict"):  # what weights_only loading alone says
        torch.load(path, weights_only=True)
    read = read_checkpoint(path)
    assert read["arch"] == NET and type(read["arch"][0]) is dict and type(read["arch"][0]["kwargs"]) is dict
    assert read["epoch"] == 1000 and float(read["best_metric"]) == pytest.approx(95.1)
    assert read["optimizer"]["param_groups"][0]["lr"] == 1e-4
    model = framework_model("query")
    load_checkpoint_weights(model, path)
    assert model.official_import["kind"] == "uniad"
    r = "module.reconstruction."
    assert torch.equal(model.state_dict()["transformer.input_proj.weight"], state[r + "input_proj.weight"])
    # the same file as the backbone's weights source
    fx = FeatureExtractor("b4", "tf_efficientnet_b4", [0, 1, 2, 3], weights="file", weights_path=str(path),
                          static_padding_size=380)  # fmt: skip
    assert torch.equal(fx.model.bn1.running_var, state["module.backbone._bn0.running_var"])


def test_a_state_dict_alone_with_module_keys_loads(tmp_path):
    state = official_state("onenip", seed=1)
    path = tmp_path / "state.pth"
    torch.save(state, path)  # torch.save(model.state_dict()) of the DDP-wrapped official model
    model = framework_model("dynamic")
    load_checkpoint_weights(model, path)
    assert model.official_import["kind"] == "onenip"
    assert torch.equal(
        model.state_dict()["refiner.body.7.weight"], state["module.reconstruction.seghead.upconv2.3.weight"]
    )


def test_other_objects_are_named_and_a_corrupt_file_keeps_its_message(tmp_path):
    path = tmp_path / "objects.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1)}, "where": Path("/somewhere")}, path)
    with pytest.raises(CheckpointError, match=r"objects\.ckpt: it holds Python objects .*pathlib\.\w*Path"):
        read_checkpoint(path)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes((tmp_path / "objects.ckpt").read_bytes()[:200])
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*truncated.ckpt.*corrupt or truncated"):
        read_checkpoint(truncated)


# ---------------------------------------------------------------- identity: what defines the network
def _meta(weights_path: str) -> dict:
    b4 = {"_target_": "anomaly_zoo.backbones.FeatureExtractor", "name": "efficientnet_b4",
          "timm_name": "tf_efficientnet_b4.aa_in1k", "out_indices": [2, 3], "weights": "file",
          "weights_path": weights_path, "normalization": "imagenet", "static_padding_size": 380}  # fmt: skip
    method = {"_target_": "anomaly_zoo.methods.onenip.OneNIP", "name": "onenip", "backbone": b4, "image_size": 224,
              "hidden": 256, "heads": 8, "score_scaling": "calibrated", "prompt_selection": "cosine"}  # fmt: skip
    return {"method": "onenip", "method_config": method, "backbone": b4, "image_size": [224, 224]}


def _cfg(overrides):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("test", overrides=["ckpt_path=x.ckpt", *overrides])
    return cfg


def test_the_identity_check_compares_the_network_and_names_the_keys(monkeypatch):
    state = {"state_dict": {}, "anomaly_zoo": _meta("/gone/official.pkl")}
    # what experiment=onenip_official_eval sets: groups, the size and inference options, no architecture key
    preset = ckpt_model._experiment_keys("onenip_official_eval")
    assert {"method", "backbone", "dataset.image_size", "method.score_scaling"} <= preset
    assert "method.hidden" not in preset
    monkeypatch.setattr(ckpt_model, "explicit_keys", lambda: preset | {"backbone.weights", "backbone.weights_path"})
    cfg = _cfg(["experiment=onenip_official_eval", "backbone.weights=file", "backbone.weights_path=/elsewhere.pth"])
    adopted = adopt_checkpoint_model(cfg, state)  # the weights' source differs: not the network
    assert adopted.backbone.weights == "checkpoint" and adopted.backbone.weights_path is None
    assert adopted.method.score_scaling == "transductive" and adopted.method.prompt_selection == "random"
    assert adopted.method.hidden == 256 and adopted.method.backbone.weights == "checkpoint"  # resolves to the above
    assert "/gone" not in json.dumps(OmegaConf.to_container(adopted.method, resolve=True))

    monkeypatch.setattr(ckpt_model, "explicit_keys", lambda: {"backbone", "method.hidden", "dataset.image_size"})
    cfg = _cfg(["method=onenip", "backbone=efficientnet_lite0", "method.hidden=128", "dataset.image_size=256"])
    with pytest.raises(CheckpointMismatchError) as err:
        adopt_checkpoint_model(cfg, state)
    text = str(err.value)
    assert "backbone.timm_name: the checkpoint's tf_efficientnet_b4, this run's tf_efficientnet_lite0" in text
    assert "method.hidden: the checkpoint's 256, this run's 128" in text
    assert "dataset.image_size: the checkpoint was trained at [224, 224], this run asks for [256, 256]" in text
    for part in text.split("; "):  # never "the checkpoint's X, this run's X"
        if "the checkpoint's " in part:
            theirs, ours = part.split("the checkpoint's ")[1].split(", this run's ")
            assert theirs != ours.split(" (leave")[0], part


# ---------------------------------------------------------------- a conversion, its original deleted
@pytest.fixture(scope="module")
def converted(synthetic_root, tmp_path_factory) -> Path:
    """An official OneNIP file converted with the official protocol's score scale (transductive), then deleted."""
    from anomaly_zoo.convert import convert

    folder = tmp_path_factory.mktemp("converted")
    official = folder / "original" / "ckpt.pkl"
    official.parent.mkdir()
    torch.save({"state_dict": official_state("onenip", seed=2)}, official)
    out = folder / "converted.ckpt"
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("convert", overrides=[
            f"dataset.root={synthetic_root}", "dataset.num_workers=0", "dataset.categories=[logo]",
            "dataset.image_size=224", "method=onenip", "backbone=efficientnet_b4", "method.score_scaling=transductive",
            f"ckpt_path={official}", f"output={out}",
        ])  # fmt: skip
    convert(cfg)
    shutil.rmtree(official.parent)
    return out


def test_a_converted_checkpoint_stands_alone(converted):
    meta = read_checkpoint(converted)["anomaly_zoo"]
    assert meta["backbone"]["weights"] == "checkpoint" and meta["backbone"]["weights_path"] is None
    assert "original" not in json.dumps(meta, default=str)  # nothing points at the deleted file


def _official_scores(method, images: torch.Tensor) -> np.ndarray:
    """tools/train_val.py's test-time formula by hand: c = mid-range of S_rec over ALL images, fused = 0.5 S_rec +
    0.5 c M̂, image score = max of a 16x16 stride-1 average pool (utils/eval_helper.EvalImageMax)."""
    with torch.no_grad():
        feats = method.features(images)
        distance = F.cosine_similarity(feats.flatten(1)[:, None], method.pool_features.flatten(1)[None], dim=-1)
        prompts = method.pool_features[distance.argmax(1)]  # class unknown: the most similar pool image
        rec = method.reconstruct(feats, prompts, jitter=False)
        s_rec = reconstruction_error_map(feats, rec, (224, 224)).numpy()
        ref = torch.sigmoid(method.refine((rec - feats).abs(), (224, 224))).numpy()
    c = (s_rec.max() + s_rec.min()) / 2
    fused = torch.from_numpy(0.5 * s_rec + 0.5 * c * ref)[:, None]
    return F.avg_pool2d(fused, 16, stride=1).flatten(1).max(1).values.numpy()


def test_predict_with_a_transductive_checkpoint_computes_the_scale_over_its_folder(
    compose_cfg, converted, synthetic_root, tmp_path, caplog
):
    from anomaly_zoo.data.image_dataset import load_image, to_model_input
    from anomaly_zoo.runner import instantiate_method, predict

    sources = sorted((synthetic_root / "logo" / "test").glob("*/*.png"))[::9][:4]
    folder = tmp_path / "in"
    folder.mkdir()
    for i, src in enumerate(sources):
        shutil.copy(src, folder / f"{i}.png")
    cfg = compose_cfg("predict", [f"ckpt_path={converted}", f"input={folder}", f"output={tmp_path / 'out'}"])
    with caplog.at_level(logging.WARNING):
        rows = predict(cfg)
    assert "score scale c = " in caplog.text and "over the 4 images scored here" in caplog.text
    assert "mid-range of S_rec over the 4 images" in (tmp_path / "out" / "report.html").read_text()

    adopted = ckpt_model.adopt_checkpoint_model(cfg, read_checkpoint(converted))
    method = instantiate_method(adopted).eval()
    load_checkpoint_weights(method, converted)
    images = torch.stack([to_model_input(load_image(folder / f"{i}.png"), (224, 224), "none", {})[0]
                          for i in range(4)])  # fmt: skip
    with pytest.raises(RuntimeError, match=r"score_scaling=transductive.*set_transductive_scale"):
        method.torch_model()(images)  # no scale computed yet: an error, never c = 1
    expected = _official_scores(method, images)
    ours = np.array([next(r.score for r in rows if Path(r.path).name == f"{i}.png") for i in range(4)])
    np.testing.assert_allclose(ours, expected, rtol=1e-5)
    assert np.ptp(expected) > 0


def test_a_convert_error_is_one_line(tmp_path):
    existing = tmp_path / "new.ckpt"
    existing.write_bytes(b"")
    proc = run_module("anomaly_zoo.convert", "ckpt_path=/nowhere.pkl", f"output={existing}", expect=1)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: FileExistsError: output={existing} exists: choose another path (nothing is "
                      "overwritten)"] and "Traceback" not in proc.stderr  # fmt: skip


@pytest.mark.slow
def test_the_official_eval_experiment_tests_a_converted_checkpoint(converted, synthetic_root, tmp_path):
    run_module(
        "anomaly_zoo.test", "experiment=onenip_official_eval", "dataset=synthetic", f"dataset.root={synthetic_root}",
        "dataset.categories=[logo]", "dataset.num_workers=0", "eval.heatmaps_per_category=0",
        f"ckpt_path={converted}", f"hydra.run.dir={tmp_path / 'run'}",
    )  # fmt: skip
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["score_scaling"] == "transductive" and results["prompt_selection"] == "random"
    assert results["config"]["backbone"]["weights"] == "checkpoint" and results["eval_size"] == [224, 224]
    assert 0.0 <= results["mean"]["P-AUROC"] <= 1.0
