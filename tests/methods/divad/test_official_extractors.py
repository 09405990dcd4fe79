"""DIVAD's feature extractors (`+method/divad/features=...`) beside the official test.py's `run_amap_extraction`.

Each extractor test.py offers (`--dino_version` v1s8, v1s16, v1b8, v1b16, v2s14, v1r50 and `--use_dino` off) is
built by its own code with random weights (DINO's and DINOv2's hub code from their work trees, torchvision's
ResNet-50 for DINO's, timm's ResNet-50 for the ImageNet path), saved in its published file format, and loaded here
the way a user's file is (`weights=file`). Both sides then turn the same input and reconstruction into the blurred
anomaly map: test.py's `run_amap_extraction` (its functions run from the work tree, `.cuda()` a no-op) against the
framework's `feature_dissimilarity` + `finish_map`. Needs

    ANOMALY_ZOO_OFFICIAL_DIVAD=/path/to/DIVAD ANOMALY_ZOO_DINO_SRC=/path/to/dino \\
    ANOMALY_ZOO_DINOV2_SRC=/path/to/dinov2 .venv/bin/python -m pytest tests/methods/divad/test_official_extractors.py

Always on: the register-token path of `DinoViT` against timm's own forward (no position-grid resize), and the
config group's files (what each extractor loads, at which size).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from anomaly_zoo.backbones import FeatureExtractor
from anomaly_zoo.backbones.dino_vit import DinoViT
from anomaly_zoo.methods.divad.anomaly_map import feature_dissimilarity, finish_map
from tests.conftest import CONF_DIR

OFFICIAL = os.environ.get("ANOMALY_ZOO_OFFICIAL_DIVAD")
DINO_SRC = os.environ.get("ANOMALY_ZOO_DINO_SRC")
DINOV2_SRC = os.environ.get("ANOMALY_ZOO_DINOV2_SRC")
TOLERANCE = 1e-5
MEAN, STD = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

#: option → (test.py's --dino_version or None for --use_dino off, its img_size, the hub entry of the model's code)
EXTRACTORS = {
    "dino_vits8": ("v1s8", 256, "dino_vits8"),
    "dino_vits16": ("v1s16", 256, "dino_vits16"),
    "dino_vitb8": ("v1b8", 256, "dino_vitb8"),
    "dino_vitb16": ("v1b16", 256, "dino_vitb16"),
    "dinov2_vitl14_reg": ("v2s14", 392, "dinov2_vitl14_reg"),
    "dino_resnet50": ("v1r50", 256, "dino_resnet50"),
    "imagenet_resnet50": (None, 224, "resnet50"),
}


def option(name: str) -> dict:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("test", overrides=["method=divad", f"+method/divad/features={name}"])
    return {"extractor": dict(cfg.method.feature_extractor), "map_size": cfg.method.map_size,
            "image_size": cfg.dataset.image_size}  # fmt: skip


@pytest.mark.parametrize("name", list(EXTRACTORS))
def test_each_option_sets_test_pys_size_for_maps_and_metrics(name):
    chosen = option(name)
    size = EXTRACTORS[name][1]
    assert chosen["map_size"] == size and chosen["image_size"] == size


def test_an_unknown_extractor_lists_the_valid_ones():
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException) as error:
        option("dino_vit_huge")
    assert "Could not find 'method/divad/features/dino_vit_huge'" in str(error.value)
    assert all(name in str(error.value) for name in EXTRACTORS)


def test_the_register_token_path_equals_timms_own_forward():
    """At the checkpoint's own grid (no resize) DinoViT's tokens are timm's final-norm patch tokens (registers and
    class token dropped); timm's forward adds the positions and inserts the registers its own way."""
    torch.manual_seed(0)
    ours = DinoViT(name="s14reg", timm_name="vit_small_patch14_reg4_dinov2", weights="random",
                   interpolate_offset=0.0, interpolate_antialias=True)  # fmt: skip
    assert ours.num_registers == 4 and not ours.class_position
    images = torch.rand(1, 3, 518, 518)
    with torch.no_grad():
        tokens = ours.vit.forward_features((images - MEAN) / STD)[:, 5:]
        (features,) = ours(images)
    assert features.shape == (1, 384, 37, 37)
    assert torch.allclose(features.flatten(2).transpose(1, 2), tokens, atol=1e-5)


# ------------------------------------------------------------------------------------------------ official code
def _randomised(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Norm affines, layer scales, positions and batch-norm statistics away from their init (a random model whose
    every part matters), in place."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if not value.is_floating_point():
                continue
            if "norm" in key or "bn" in key or key.endswith(("gamma", "pos_embed", "running_mean")):
                value.add_(0.3 * torch.randn(value.shape, generator=g))
            if key.endswith("running_var"):
                value.copy_(0.5 + torch.rand(value.shape, generator=g))
    return model.eval()


def _official_model(name: str, hub_entry: str, work: Path):
    """(test.py's `pretrained_model` as it builds it, the file a user would give us)."""
    import timm
    from torchvision.models.feature_extraction import create_feature_extractor

    torch.manual_seed(1)
    path = work / f"{name}.pth"
    if name == "imagenet_resnet50":
        model = _randomised(timm.create_model("resnet50", pretrained=False, features_only=True), 2)
        torch.save(model.state_dict(), path)
        return model, path
    source = DINOV2_SRC if name.startswith("dinov2") else DINO_SRC
    model = _randomised(torch.hub.load(str(Path(source).expanduser()), hub_entry, source="local", pretrained=False), 2)
    torch.save(model.state_dict(), path)  # the layout of DINO's / DINOv2's published checkpoints
    if name == "dino_resnet50":
        nodes = {f"layer{i}": f"layer{i}" for i in range(1, 5)}
        model = create_feature_extractor(model, return_nodes=nodes)  # test.py's v1r50 branch
    return model, path


def _ours(name: str, path: Path) -> torch.nn.Module:
    config = {k: v for k, v in option(name)["extractor"].items() if k != "_target_"}
    config.update(weights="file", weights_path=str(path))
    if "out_indices" in config:
        config["out_indices"] = list(config["out_indices"])
        config["model_kwargs"] = dict(config.get("model_kwargs") or {})
        return FeatureExtractor(**config).eval()
    return DinoViT(**config).eval()


@pytest.mark.skipif(not OFFICIAL, reason="set ANOMALY_ZOO_OFFICIAL_DIVAD to a work tree of github.com/giddyyupp/DIVAD")
@pytest.mark.skipif(not DINO_SRC, reason="set ANOMALY_ZOO_DINO_SRC to a work tree of github.com/facebookresearch/dino")
@pytest.mark.skipif(
    not DINOV2_SRC, reason="set ANOMALY_ZOO_DINOV2_SRC to a work tree of github.com/facebookresearch/dinov2"
)
@pytest.mark.parametrize("name", list(EXTRACTORS))
def test_each_extractor_equals_test_pys_run_amap_extraction(name, tmp_path, monkeypatch):
    from tests.methods.divad.test_official_divad import official_definitions

    official_dir = Path(str(OFFICIAL)).expanduser()
    monkeypatch.syspath_prepend(str(official_dir))  # test.py imports eval_helper
    if importlib.util.find_spec("tabulate") is None:  # eval_helper imports it only to print its metric table
        stub = types.ModuleType("tabulate")
        stub.__spec__ = importlib.machinery.ModuleSpec("tabulate", None)
        monkeypatch.setitem(sys.modules, "tabulate", stub)
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)
    monkeypatch.setattr(torch.nn.Module, "cuda", lambda self, *a, **k: self)
    version, size, hub_entry = EXTRACTORS[name]
    test = official_definitions(official_dir / "test.py")
    model, path = _official_model(name, hub_entry, tmp_path)
    patch = {"v2s14": 14, "v1s16": 16, "v1b16": 16}.get(version or "", 8)
    test.update(pretrained_model=model, img_size=size, patch_size=patch)
    g = torch.Generator().manual_seed(3)
    image = torch.rand(1, 3, size, size, generator=g)
    recon = (image + 0.2 * torch.rand(1, 3, size, size, generator=g)).clamp(0, 1)  # a reconstruction nearby
    with torch.no_grad():
        theirs = test["run_amap_extraction"](
            (image - MEAN) / STD, (recon - MEAN) / STD, "000.png", str(tmp_path), "out",
            version or "v1s8", version is not None, False, None,
        )  # fmt: skip
        maps, _ = feature_dissimilarity(_ours(name, path), image, recon, size)
        ours = finish_map(maps, None, 5.0, "symmetric")
    difference = float((theirs[0, 0].double() - ours[0].double()).abs().max())
    print(f"{name}: max |official - ours| = {difference:.2e} (map range {float(ours.max() - ours.min()):.3f})")
    assert difference < TOLERANCE
    assert float(ours.max() - ours.min()) > 1e-3  # a map with structure, not a constant that would hide differences
    assert np.isfinite(ours.numpy()).all()
