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


def test_tf_same_padding_hand_computed():
    from anomaly_zoo.backbones.same_padding import tf_same_padding

    # out = ceil(n / s); total = (out - 1) * s + k - n, the odd pixel after (TensorFlow's convention)
    assert tf_same_padding(56, 5, 2) == (1, 2)  # 28 out: 27 * 2 + 5 - 56 = 3
    assert tf_same_padding(95, 5, 2) == (2, 2)  # 48 out: 47 * 2 + 5 - 95 = 4 (b4's block 2.0 at 380 px)
    assert tf_same_padding(224, 3, 2) == (0, 1) and tf_same_padding(7, 3, 1) == (1, 1)


def test_static_padding_is_the_380px_padding_at_every_size():
    """Frozen for 380 px, the network equals timm's own (size-dependent) padding at 380 px and differs at 224."""
    torch.manual_seed(0)
    dynamic = FeatureExtractor("b4", "tf_efficientnet_b4", [0, 1, 2, 3], weights="random")
    static = FeatureExtractor("b4", "tf_efficientnet_b4", [0, 1, 2, 3], weights="random", static_padding_size=380)
    static.model.load_state_dict(dynamic.model.state_dict())  # same keys: the padding is not a parameter
    conv = static.model.blocks[2][0].conv_dw
    assert conv.static_pad == (2, 2, 2, 2) and conv.padding == (0, 0)
    assert static.channels == [24, 32, 56, 160] and static.strides == [2, 4, 8, 16]
    x380, x224 = torch.rand(1, 3, 380, 380), torch.rand(1, 3, 224, 224)
    for a, b in zip(dynamic(x380), static(x380), strict=True):
        torch.testing.assert_close(a, b)
    assert not torch.allclose(dynamic(x224)[2], static(x224)[2], atol=1e-4)
    assert static.with_stages([3]).model.blocks[2][0].conv_dw.static_pad == (2, 2, 2, 2)  # kept by with_stages


def test_lukemelas_file_loads_into_timm(tmp_path):
    from anomaly_zoo.backbones.offline_weights import efficientnet_lite0_package_file

    # the packaged Lite0 file is a lukemelas state dict: weights=file reads it by its key names
    fx = FeatureExtractor("lite0", "tf_efficientnet_lite0", [3], weights="file", normalization="tf",
                          weights_path=str(efficientnet_lite0_package_file()))  # fmt: skip
    packaged = FeatureExtractor("lite0", "tf_efficientnet_lite0", [3], weights="package", normalization="tf")
    x = torch.rand(1, 3, 64, 64)
    assert torch.equal(fx(x)[0], packaged(x)[0])
    with pytest.raises(BackboneWeightsError, match="does not fit 'tf_efficientnet_b4'"):
        FeatureExtractor("b4", "tf_efficientnet_b4", [3], weights="file",
                         weights_path=str(efficientnet_lite0_package_file()))  # fmt: skip


def test_official_b4_offline_error_names_every_local_source(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BackboneWeightsError, match=r"timm state dict.*lukemelas.*efficientnet-b4-6ed6700e.pth.*OneNIP"):
        FeatureExtractor("efficientnet_b4", "tf_efficientnet_b4.aa_in1k", [3], weights="hub", static_padding_size=380)
