"""This framework's OneNIP and UniAD against the official code (github.com/gaobb/OneNIP @ e93dec5), component by
component, on random weights moved across by the framework's own converter (an official-format checkpoint file
loaded through `ckpt_path`'s path and `backbone.weights=file`).

Runs when ANOMALY_ZOO_OFFICIAL_ONENIP points at a work tree of the official repository
(`git -C <mirror> archive HEAD | tar -x -C <dir>`); skipped otherwise. The official code is imported from there,
never copied. Its `.cuda()` calls are made no-ops for the duration of the module (CPU); `tabulate` and `easydict`
are only needed by parts not run here. Every comparison must agree to 1e-4 relative (max |a - b| / max |a|).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from anomaly_zoo.backbones import FeatureExtractor
from anomaly_zoo.checkpoints.model import load_checkpoint_weights
from anomaly_zoo.data.context import TestContext
from anomaly_zoo.methods.onenip import OneNIP
from anomaly_zoo.methods.onenip.torch_model import reconstruction_error_map

ROOT = os.environ.get("ANOMALY_ZOO_OFFICIAL_ONENIP")
pytestmark = pytest.mark.skipif(
    not ROOT, reason="set ANOMALY_ZOO_OFFICIAL_ONENIP to a work tree of github.com/gaobb/OneNIP to compare with it"
)
TOL = 1e-4
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)  # the official configs' pixel_mean / pixel_std
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def rel(official, ours) -> float:
    a, b = torch.as_tensor(official).double(), torch.as_tensor(ours).double()
    assert a.shape == b.shape, f"shapes {tuple(a.shape)} vs {tuple(b.shape)}"
    return float((a - b).abs().max() / a.abs().max().clamp_min(1e-12))


def assert_close(name: str, official, ours) -> None:
    r = rel(official, ours)
    print(f"{name}: relative {r:.1e}")  # pytest -s shows the table of measured differences
    assert r <= TOL, f"{name}: relative difference {r:.2e} > {TOL}"


class _Attr(dict):
    """easydict stand-in: the official code reads its YAML config by attribute."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError as err:
            raise AttributeError(key) from err

    def __setattr__(self, key, value):
        self[key] = value


def _wrap(value):
    if isinstance(value, dict):
        return _Attr({k: _wrap(v) for k, v in value.items()})
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value


@pytest.fixture(scope="module")
def official():
    """The official package roots on sys.path, `.cuda()` a no-op; undone after the module."""
    saved_cuda, saved_path = torch.Tensor.cuda, list(sys.path)
    torch.Tensor.cuda = lambda self, *a, **k: self
    stubs = [m for m in ("tabulate", "easydict") if importlib.util.find_spec(m) is None]
    for name in stubs:
        sys.modules[name] = types.ModuleType(name)
    sys.modules["tabulate"].tabulate = getattr(sys.modules["tabulate"], "tabulate", lambda *a, **k: "")
    sys.path.insert(0, str(ROOT))
    clashing = {k: sys.modules.pop(k) for k in list(sys.modules) if k.split(".")[0] in ("models", "utils")}
    try:
        yield types.SimpleNamespace(root=Path(ROOT))
    finally:
        torch.Tensor.cuda = saved_cuda
        sys.path[:] = saved_path
        for k in [k for k in sys.modules if k.split(".")[0] in ("models", "utils")]:
            del sys.modules[k]
        sys.modules.update(clashing)
        for name in stubs:
            sys.modules.pop(name, None)


def official_model(official, config: str, size: int):
    from models.model_helper import ModelHelper
    from utils.misc_helper import update_config

    cfg = _wrap(yaml.safe_load((official.root / "configs" / config).read_text()))
    cfg.dataset.input_size = str([size, size])
    cfg.net[0].kwargs.pretrained = False
    cfg = update_config(cfg)
    model = ModelHelper(cfg.net)
    model.cpu()
    return model, cfg


@torch.no_grad()
def randomise(module: nn.Module, gen: torch.Generator) -> None:
    """Non-trivial biases, norm affines and BN statistics, so that a wrong key map cannot go unnoticed."""
    for m in module.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
            m.weight.uniform_(0.8, 1.2, generator=gen)
            m.bias.normal_(0, 0.1, generator=gen)
        elif isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)) and m.bias is not None:
            m.bias.normal_(0, 0.05, generator=gen)
        elif isinstance(m, nn.MultiheadAttention):
            m.in_proj_bias.normal_(0, 0.05, generator=gen)


@torch.no_grad()
def calibrate_backbone(backbone: nn.Module, images: torch.Tensor) -> None:
    """A random EfficientNet explodes through 32 blocks: set its BN statistics to a batch's (O(1) activations)."""
    params = backbone._global_params
    backbone._global_params = params._replace(drop_connect_rate=None)
    for m in backbone.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    backbone.train()
    backbone.extract_features(images)
    backbone.eval()
    backbone._global_params = params


def images(n: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """[0, 1] images with spatial structure (smooth low-frequency noise plus fine grain)."""
    low = torch.rand(n, 3, size // 8, size // 8, generator=gen)
    x = F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    return (x + 0.05 * torch.randn(n, 3, size, size, generator=gen)).clamp(0, 1)


def no_dropout(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        elif isinstance(m, nn.MultiheadAttention):
            m.dropout = 0.0


@pytest.fixture(scope="module")
def backbone_state(official):
    from models.backbones import efficientnet_b4

    gen = torch.Generator().manual_seed(0)
    bb = efficientnet_b4(pretrained=False, outblocks=[1, 5, 9, 21], outstrides=[2, 4, 8, 16])
    randomise(bb, gen)
    calibrate_backbone(bb, (images(4, 224, gen) - MEAN) / STD)
    return bb.state_dict()


def save_official(path: Path, model: nn.Module) -> Path:
    """What tools/train_val.py saves: {"state_dict": ...} of the DDP-wrapped ModelHelper."""
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    return path


def ours(ckpt: Path, method: str, size: int, **overrides) -> OneNIP:
    """The framework's model from conf/method/<method>.yaml's defaults, backbone weights and all other weights
    from the official checkpoint file."""
    conf = yaml.safe_load((Path(__file__).parents[3] / "conf" / "method" / f"{method}.yaml").read_text())
    if "defaults" in conf:
        base = yaml.safe_load((Path(__file__).parents[3] / "conf" / "method" / "onenip.yaml").read_text())
        conf = {**base, **{k: v for k, v in conf.items() if k != "defaults"}}
    kwargs = {k: v for k, v in conf.items() if k not in ("_target_", "name", "backbone", "image_size", "seed")}
    backbone_conf = yaml.safe_load(
        (Path(__file__).parents[3] / "conf" / "backbone" / "efficientnet_b4.yaml").read_text()
    )
    backbone = FeatureExtractor(
        "efficientnet_b4", backbone_conf["timm_name"], backbone_conf["out_indices"], weights="file",
        weights_path=str(ckpt), static_padding_size=backbone_conf["static_padding_size"],
    )  # fmt: skip
    model = OneNIP(backbone, image_size=size, seed=0, **{**kwargs, **overrides})
    load_checkpoint_weights(model, ckpt)
    return model.eval()


def official_fused(rec_pred: torch.Tensor, ref_pred: torch.Tensor):
    """tools/train_val.py's test-time fusion: 0.5 S_rec + 0.5 c M̂ with c the mid-range of S_rec over the test set,
    then utils/eval_helper.EvalImageMax (average pool 16, max) for the image score."""
    from utils.eval_helper import EvalImageMax

    rec = rec_pred[:, 0].numpy()
    c = (rec.max() + rec.min()) / 2
    fused = 0.5 * rec + 0.5 * c * ref_pred[:, 0].numpy()
    return torch.from_numpy(fused), torch.from_numpy(EvalImageMax.encode_pred(fused, avgpool_size=[16, 16])), c


@pytest.mark.parametrize("size", [224, 256])
def test_backbone_stages(official, backbone_state, tmp_path, size):
    from models.backbones import efficientnet_b4

    bb = efficientnet_b4(pretrained=False, outblocks=[1, 5, 9, 21], outstrides=[2, 4, 8, 16])
    bb.load_state_dict(backbone_state)
    bb.eval()
    torch.save({"state_dict": {f"module.backbone.{k}": v for k, v in backbone_state.items()}}, tmp_path / "c.pkl")
    fx = FeatureExtractor("efficientnet_b4", "tf_efficientnet_b4", [0, 1, 2, 3], weights="file",
                          weights_path=str(tmp_path / "c.pkl"), static_padding_size=380)  # fmt: skip
    x = images(2, size, torch.Generator().manual_seed(size))
    with torch.no_grad():
        theirs = bb({"image": (x - MEAN) / STD})["features"]
        mine = fx(x)
    for stage, (a, b) in enumerate(zip(theirs, mine, strict=True)):
        assert_close(f"backbone {size}px stage {stage}", a, b)
    # the comparison can see the padding: timm's own size-dependent padding differs at 224 px
    if size == 224:
        dynamic = FeatureExtractor("efficientnet_b4", "tf_efficientnet_b4", [0, 1, 2, 3], weights="file",
                                   weights_path=str(tmp_path / "c.pkl"))  # fmt: skip
        with torch.no_grad():
            assert rel(theirs[3], dynamic(x)[3]) > 1e-2


@pytest.fixture(scope="module", params=[224, 256])
def onenip_pair(request, official, backbone_state, tmp_path_factory):
    size = request.param
    off, _ = official_model(official, "onenip_config.yaml", size)
    off.backbone.load_state_dict(backbone_state)
    randomise(off.reconstruction, torch.Generator().manual_seed(1))
    off.eval()
    ckpt = save_official(tmp_path_factory.mktemp("onenip") / "ckpt.pkl", off)
    return size, off, ckpt


def test_onenip_inference(onenip_pair):
    size, off, ckpt = onenip_pair
    model = ours(ckpt, "onenip", size, prompt_selection="oracle", score_scaling="transductive")
    gen = torch.Generator().manual_seed(2)
    x, prompts = images(2, size, gen), images(2, size, gen)
    with torch.no_grad():
        out = off({"image": (x - MEAN) / STD, "prompt": (prompts - MEAN) / STD})
        feats, prompt_feats = model.features(x), model.features(prompts)
        assert_close(f"neck {size}px", out["query_feat"], feats)
        rec = model.reconstruct(feats, prompt_feats, jitter=False)
        assert_close(f"reconstruction {size}px", out["rec_feat"], rec)
        assert_close(f"S_rec {size}px", out["rec_pred"][:, 0], reconstruction_error_map(feats, rec, (size, size)))
        refined = torch.sigmoid(model.refine((rec - feats).abs(), (size, size)))
        assert_close(f"refiner {size}px", out["ref_pred"][:, 0], refined)
    fused, scores, c = official_fused(out["rec_pred"], out["ref_pred"])
    # the official protocol: oracle prompts (one per class) and the transductive scale over this "test set"
    model.pool_features, model.pool_category, model.pool_categories = prompt_feats, torch.arange(2), ["a", "b"]
    batches = [{"image": x, "category": ["a", "b"]}]
    model.setup_test(TestContext(categories=["a", "b"], protocol="unified", root=None, test_batches=lambda: batches))
    model.on_test_start()
    assert_close(f"transductive scale {size}px", torch.tensor(c), torch.tensor(model._test_scale))
    pred = model.predict_batch(x, ["a", "b"])
    assert_close(f"fused map {size}px", fused, pred["anomaly_maps"])
    assert_close(f"image score {size}px", scores, pred["pred_scores"])


def test_onenip_training_losses(onenip_pair, official):
    from utils.criterion_helper import build_criterion

    size, off, ckpt = onenip_pair
    if size != 224:
        pytest.skip("losses are size-independent code; checked at 224 px")
    model = ours(ckpt, "onenip", size)
    _, cfg = official_model(official, "onenip_config.yaml", size)
    gen = torch.Generator().manual_seed(3)
    x, prompts = images(2, size, gen), images(2, size, gen)
    synthetic, masks = x.clone(), torch.zeros(2, size, size)
    for i in range(2):  # one shared pseudo-anomalous batch: a flipped patch of another image
        y0 = 40 + 30 * i
        synthetic[i, :, y0 : y0 + 48, 60:108] = prompts[i, :, y0 : y0 + 48, 60:108].flip(-1)
        masks[i, y0 : y0 + 48, 60:108] = 1
    off_train = off.train()
    no_dropout(off_train)
    off_train.reconstruction.feature_jitter = None
    outs = off_train({"image": (x - MEAN) / STD, "aimage": (synthetic - MEAN) / STD, "prompt": (prompts - MEAN) / STD,
                      "mask": torch.zeros(2, 1, size, size), "amask": masks[:, None]})  # fmt: skip
    criteria = build_criterion(cfg.criterion)
    official_total = sum(c.weight * c(outs) for c in criteria.values())
    off.eval()
    model.train()
    no_dropout(model)
    model.synthesis = lambda images, rng: (synthetic, masks)
    with torch.no_grad():
        feats, prompt_feats = model.features(x), model.features(prompts)
    losses = model._losses(x, feats, prompt_feats, torch.Generator(), jitter=False)
    with torch.no_grad():
        streams = torch.cat([feats, model.features(synthetic)])
        rec = model.reconstruct(streams, prompt_feats, jitter=False)
        logits = model.refine((rec - streams).abs(), (size, size))
    assert_close("train reconstruction (clean)", outs["rec_feat"][:2], rec[:2])
    assert_close("train restoration (pseudo-anomalous)", outs["rec_feat"][2:], rec[2:])
    assert_close("train refiner logits", outs["ref_logit"][:, 0], logits)
    assert_close("MSE term", criteria["FeatureMSELoss"](outs), (losses["rec"] + losses["res"]) / 2)
    assert_close("Dice term", criteria["DiceLoss"](outs), losses["dice"])
    assert_close("total loss", official_total, model.total_loss(losses))


def test_uniad(official, backbone_state, tmp_path):
    from utils.criterion_helper import build_criterion

    size = 224
    off, cfg = official_model(official, "uniad_config.yaml", size)
    off.backbone.load_state_dict(backbone_state)
    randomise(off.reconstruction, torch.Generator().manual_seed(4))
    off.reconstruction.save_recon = None  # the official UniAD would write every reconstruction to disk
    off.eval()
    model = ours(save_official(tmp_path / "uniad.pkl", off), "uniad", size, score_scaling="none")
    x = images(2, size, torch.Generator().manual_seed(5))
    with torch.no_grad():
        out = off({"image": (x - MEAN) / STD})
        feats = model.features(x)
        rec = model.reconstruct(feats, None, jitter=False)
    assert_close("UniAD reconstruction", out["rec_feat"], rec)
    maps = out["rec_pred"][:, 0]
    from utils.eval_helper import EvalImageMax

    pred = model.predict_batch(x, ["a", "a"])
    assert_close("UniAD map", maps, pred["anomaly_maps"])
    assert_close("UniAD image score", EvalImageMax.encode_pred(maps.numpy(), [16, 16]), pred["pred_scores"])
    no_dropout(off)
    off.train()
    off.reconstruction.feature_jitter = None
    outs = off({"image": (x - MEAN) / STD})
    official_loss = sum(c.weight * c(outs) for c in build_criterion(cfg.criterion).values())
    model.train()
    no_dropout(model)
    assert_close("UniAD loss", official_loss, model.total_loss(model._losses(x, feats, None, torch.Generator(), False)))


def test_jitter_formula(official, backbone_state, tmp_path):
    """Feature jitter with the same standard-normal draws: official add_jitter vs add_feature_jitter."""
    from anomaly_zoo.methods.onenip.torch_model import add_feature_jitter

    off, cfg = official_model(official, "onenip_config.yaml", 224)
    tokens = torch.randn(196, 2, 272, generator=torch.Generator().manual_seed(6))  # official (HW, B, C)
    noise = torch.randn(tokens.shape, generator=torch.Generator().manual_seed(7))
    randn = torch.randn
    torch.randn = lambda *a, **k: noise.clone()
    try:
        theirs = off.reconstruction.add_jitter(tokens, 20.0, 1.0)
    finally:
        torch.randn = randn
    randn_like = torch.randn_like
    torch.randn_like = lambda t, **k: noise.transpose(0, 1).clone()
    try:
        mine = add_feature_jitter(tokens.transpose(0, 1), 20.0, 1.0)
    finally:
        torch.randn_like = randn_like
    assert_close("jitter", theirs.transpose(0, 1), mine)
    assert np.isclose(float(cfg.net[2].kwargs.feature_jitter.scale), 20.0)
