"""DinoViT: DINO's own patch tokens (final norm, run-time position grid) from timm's or DINO's checkpoint files.

The comparison with DINO's own model code is in tests/methods/divad/test_official_divad.py (needs a DINO checkout).
"""

from __future__ import annotations

import pytest
import torch

from anomaly_zoo.backbones.dino_vit import DinoViT
from anomaly_zoo.backbones.feature_extractor import BackboneWeightsError


@pytest.fixture(scope="module")
def random_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    state = DinoViT(weights="random").vit.state_dict()
    g = torch.Generator().manual_seed(1)
    for key, value in state.items():  # LayerNorm affines and position grid away from their identity-like init
        if "norm" in key or key == "pos_embed":
            value.add_(0.3 * torch.randn(value.shape, generator=g))
    return state


@pytest.mark.slow
def test_timm_and_dino_checkpoint_formats_give_identical_features(random_state, tmp_path):
    from safetensors.torch import save_file

    save_file(random_state, str(tmp_path / "vit_small_patch8_224.dino.safetensors"))  # timm's hub file format
    torch.save(random_state, tmp_path / "dino_deitsmall8_pretrain.pth")  # DINO's torch-hub file: the ViT state dict
    head = {"head.mlp.0.weight": torch.zeros(8, 384), "head.last_layer.weight_g": torch.ones(8, 1)}
    torch.save(
        {
            "teacher": {**{f"backbone.{k}": v for k, v in random_state.items()}, **head},
            "student": {f"module.backbone.{k}": v for k, v in random_state.items()},
            "epoch": 100,
        },
        tmp_path / "checkpoint.pth",
    )  # fmt: skip  DINO's training checkpoint (main_dino.py): teacher wins, head dropped
    x = torch.rand(2, 3, 256, 256)
    feats = [
        DinoViT(weights="file", weights_path=str(tmp_path / name))(x)[0]
        for name in ("vit_small_patch8_224.dino.safetensors", "dino_deitsmall8_pretrain.pth", "checkpoint.pth")
    ]
    assert feats[0].shape == (2, 384, 32, 32)
    assert torch.equal(feats[0], feats[1]) and torch.equal(feats[0], feats[2])


def test_tokens_are_timms_final_normed_tokens_and_the_grid_is_interpolated(random_state, tmp_path):
    torch.save(random_state, tmp_path / "dino.pth")
    model = DinoViT(weights="file", weights_path=str(tmp_path / "dino.pth"))
    x = torch.rand(1, 3, 224, 224)  # the checkpoint's own grid: timm's forward_features is the reference
    with torch.no_grad():
        reference = model.vit.forward_features((x - model.mean) / model.std)[:, 1:]
    assert torch.allclose(model(x)[0].flatten(2).transpose(1, 2), reference, atol=1e-5)
    assert model.position_embedding(224, 224) is model.vit.pos_embed
    pos = model.position_embedding(256, 256)  # 28 x 28 -> 32 x 32 at run time, the class token's entry kept
    assert pos.shape == (1, 1 + 32 * 32, 384) and torch.equal(pos[:, 0], model.vit.pos_embed[:, 0])


def test_bad_weight_files_are_named(tmp_path):
    with pytest.raises(BackboneWeightsError, match=r"weights_path='/nowhere.pth' is not a file.*dino_deitsmall8"):
        DinoViT(weights="file", weights_path="/nowhere.pth")
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "resnet.pth")
    with pytest.raises(BackboneWeightsError, match=r"resnet.pth: not a vit_small_patch8_224.dino checkpoint"):
        DinoViT(weights="file", weights_path=str(tmp_path / "resnet.pth"))
