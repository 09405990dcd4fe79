"""Backbones: real packaged weights offline, and a clear error (never random weights) for hub-only models."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from skimage import data

from anomaly_zoo.backbones import BackboneWeightsError, FeatureExtractor
from anomaly_zoo.backbones.offline_weights import load_efficientnet_lite0


def _tf_input(img: np.ndarray) -> torch.Tensor:
    x = torch.tensor(img).permute(2, 0, 1)[None].float()
    x = torch.nn.functional.interpolate(x, size=(224, 224), mode="bilinear", antialias=True)
    return (x - 127) / 128


def test_packaged_lite0_weights_are_real_imagenet_weights():
    model = timm.create_model("tf_efficientnet_lite0")
    load_efficientnet_lite0(model)
    model.eval()
    with torch.no_grad():
        cat = model(_tf_input(data.chelsea())).argmax().item()
        coffee = model(_tf_input(data.coffee())).argmax().item()
    assert cat in (281, 282, 285)  # ImageNet tabby / tiger cat / Egyptian cat
    assert coffee == 967  # espresso


def test_feature_extractor_channels_come_from_the_model():
    fx = FeatureExtractor("lite0", "tf_efficientnet_lite0", [1, 2, 3], weights="package", normalization="tf")
    feats = fx(torch.rand(2, 3, 64, 64))
    assert fx.channels == [24, 40, 112] and fx.strides == [4, 8, 16]
    assert [f.shape[1] for f in feats] == fx.channels and feats[-1].shape[-1] == 4
    fx.train()
    assert not fx.model.training and not any(p.requires_grad for p in fx.parameters())


@pytest.mark.parametrize("timm_name", ["efficientnet_b4.ra2_in1k", "vit_small_patch8_224.dino"])
def test_hub_only_backbone_fails_clearly_offline(monkeypatch, timm_name):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BackboneWeightsError, match=rf"'{timm_name}' from the Hugging Face hub.*weights_path="):
        FeatureExtractor("x", timm_name, [-1], weights="hub")


def test_missing_local_weights_file_is_named(tmp_path):
    with pytest.raises(BackboneWeightsError, match=r"weights_path=.*nothing.safetensors' is not a file"):
        FeatureExtractor(
            "x", "efficientnet_b4", [2], weights="file", weights_path=str(tmp_path / "nothing.safetensors")
        )


def test_local_weights_file_is_loaded(tmp_path):
    from safetensors.torch import save_file

    src = timm.create_model("resnet18", pretrained=False, num_classes=10)
    state = {k: v + 0.5 if v.is_floating_point() else v for k, v in src.state_dict().items()}
    save_file(state, str(tmp_path / "r18.safetensors"))
    fx = FeatureExtractor("r18", "resnet18", [1], weights="file", weights_path=str(tmp_path / "r18.safetensors"))
    assert torch.equal(fx.model.conv1.weight, state["conv1.weight"])


def test_dino_vits8_gives_32x32_patch_tokens_at_256():
    # DIVAD's extractor: last-layer patch tokens, CLS dropped (random weights here: the shape is what is tested).
    fx = FeatureExtractor("dino", "vit_small_patch8_224.dino", [-1], weights="random", model_kwargs={"img_size": 256})
    (tokens,) = fx(torch.rand(1, 3, 256, 256))
    assert tokens.shape == (1, 384, 32, 32) and fx.channels == [384]
