"""Official OneNIP/UniAD checkpoints load: every key of the official layouts is consumed or reported, the converted
model runs, and a file of the wrong kind or size is a clear error.

The layouts are the official models' state_dict keys/shapes as tools/train_val.py saves them (224 px,
`official_keys/*.txt`, listed from github.com/gaobb/OneNIP @ e93dec5); the tensors are random.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from anomaly_zoo.backbones import FeatureExtractor
from anomaly_zoo.checkpoints.model import load_checkpoint_weights
from anomaly_zoo.checkpoints.official import OfficialCheckpointError, official_kind
from anomaly_zoo.methods.onenip import OneNIP

KEYS = Path(__file__).parent / "official_keys"
DTYPES = {"float32": torch.float32, "int64": torch.int64}


def official_state(kind: str, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for line in (KEYS / f"{kind}_keys.txt").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape, dtype = line.split("\t")
        dims = [int(d) for d in shape.strip("[]").split(",") if d.strip()]
        if DTYPES[dtype] is torch.int64:
            state[key] = torch.tensor(7, dtype=torch.int64).reshape(dims)
        elif key.endswith("running_var"):
            state[key] = torch.rand(dims, generator=gen) + 0.5
        else:
            state[key] = torch.randn(dims, generator=gen) * 0.05
    return state


def b4() -> FeatureExtractor:
    return FeatureExtractor(
        "efficientnet_b4", "tf_efficientnet_b4", [0, 1, 2, 3], weights="random", static_padding_size=380
    )


def framework_model(decoder: str, size: int = 224) -> OneNIP:
    uniad = decoder == "query"
    return OneNIP(
        b4(), image_size=size, decoder=decoder, restoration=not uniad, refiner=not uniad, seed=0,
        score_scaling="none" if uniad else "calibrated",
    ).eval()  # fmt: skip


@pytest.mark.parametrize(("kind", "decoder"), [("onenip", "dynamic"), ("uniad", "query")])
def test_official_checkpoint_converts_key_for_key_and_runs(tmp_path, kind, decoder):
    state = official_state(kind)
    assert official_kind(state) == kind
    path = tmp_path / "ckpt.pkl"
    torch.save({"epoch": 1000, "state_dict": state, "best_metric": 0.9}, path)
    model = framework_model(decoder)
    load_checkpoint_weights(model, path)  # strict load: every framework weight got a value
    imported = model.official_import
    assert imported["kind"] == kind
    # every official key is used, or reported: only the backbone's head (conv_head, its BN, the classifier) is unused
    assert imported["unused_keys"] and all(
        k.startswith(("backbone._conv_head", "backbone._bn1.", "backbone._fc")) for k in imported["unused_keys"]
    )
    own = model.state_dict()
    # spot checks, tensor for tensor: the transformer, the position embedding layout, the backbone, the refiner
    r = "module.reconstruction."
    assert torch.equal(own["transformer.input_proj.weight"], state[r + "input_proj.weight"])
    assert torch.equal(own["transformer.pos.col.weight"], state[r + "pos_embed.col_embed.weight"])
    assert torch.equal(own["transformer.encoder.3.mlp.3.bias"], state[r + "transformer.encoder.layers.3.linear2.bias"])
    assert torch.equal(
        own["neck.backbone.model.blocks.4.5.conv_pwl.weight"], state["module.backbone._blocks.21._project_conv.weight"]
    )
    if kind == "onenip":
        assert torch.equal(own["refiner.body.7.weight"], state[r + "seghead.upconv2.3.weight"])
        assert torch.equal(own["transformer.final_attn.in_proj_weight"],
                           state[r + "transformer.decoder.final_attn_token_to_image.in_proj_weight"])  # fmt: skip
    else:
        assert torch.equal(own["transformer.decoder.2.queries.weight"],
                           state[r + "transformer.decoder.layers.2.learned_embed.weight"])  # fmt: skip
    # the official file has no prompt pool: one is built from normal images, then the model scores images
    images = torch.rand(2, 3, 224, 224)
    if kind == "onenip":
        dataset = [{"image": images[i], "category": c} for i, c in enumerate(["a", "b"])]
        model.pool_features = model.features(images)
        model.pool_category = torch.arange(2)
        model.pool_categories = ["a", "b"]
        model._calibrate_scale(_Dataset(dataset))
        assert float(model.rec_scale) > 0
    out = model.predict_batch(images, ["a", "b"])
    assert out["anomaly_maps"].shape == (2, 224, 224) and torch.isfinite(out["pred_scores"]).all()


class _Dataset(list):
    samples = ()


def test_wrong_kind_and_wrong_size_are_named(tmp_path):
    path = tmp_path / "uniad.pkl"
    torch.save({"state_dict": official_state("uniad")}, path)
    with pytest.raises(OfficialCheckpointError, match=r"official UNIAD checkpoint but method=onenip.*method=uniad"):
        load_checkpoint_weights(framework_model("dynamic"), path)
    path = tmp_path / "onenip.pkl"
    torch.save({"state_dict": official_state("onenip")}, path)
    with pytest.raises(OfficialCheckpointError, match=r"224 px.*built for 16 \(256 px\).*dataset.image_size=224"):
        load_checkpoint_weights(framework_model("dynamic", size=256), path)


def test_official_checkpoint_is_a_backbone_weights_source(tmp_path):
    state = official_state("onenip")
    path = tmp_path / "ckpt.pkl"
    torch.save({"state_dict": state}, path)
    fx = FeatureExtractor("b4", "tf_efficientnet_b4", [0, 1, 2, 3], weights="file", weights_path=str(path),
                          static_padding_size=380)  # fmt: skip
    assert torch.equal(fx.model.blocks[2][0].conv_dw.weight, state["module.backbone._blocks.6._depthwise_conv.weight"])
    assert torch.equal(fx.model.bn1.running_var, state["module.backbone._bn0.running_var"])


def test_official_checkpoint_is_completed_at_test_time_and_by_convert(compose_cfg, tmp_path):
    """Testing an official file builds the prompt pool and score scale from the training images and records it;
    `anomaly_zoo.convert` writes a framework checkpoint holding exactly that completed model."""
    from hydra.utils import instantiate

    from anomaly_zoo.convert import convert
    from anomaly_zoo.runner import instantiate_method

    official = tmp_path / "ckpt.pkl"
    torch.save({"epoch": 1000, "state_dict": official_state("onenip")}, official)
    overrides = [
        "method=onenip", "backbone=efficientnet_b4", "backbone.weights=file", f"backbone.weights_path={official}",
        "dataset.categories=[logo]", "dataset.image_size=224", f"ckpt_path={official}",
    ]  # fmt: skip
    cfg = compose_cfg("test", overrides)
    datamodule = instantiate(cfg.dataset)
    datamodule.setup("fit")
    tested = instantiate_method(cfg)
    load_checkpoint_weights(tested, official)
    tested.setup_test(datamodule.test_context())  # what the runner does before trainer.test
    tested.on_test_start()
    meta = tested.result_metadata()["official_checkpoint"]  # what results.json records
    assert meta["kind"] == "onenip" and meta["built_from_training_images"] == ["prompt_pool", "rec_scale"]
    assert tested.pool_categories == ["logo"] and float(tested.rec_scale) != 1.0

    out = tmp_path / "converted.ckpt"
    convert(compose_cfg("convert", [*overrides, f"output={out}"]))
    with pytest.raises(FileExistsError, match="exists"):
        convert(compose_cfg("convert", [*overrides, f"output={out}"]))  # never overwritten
    converted = instantiate_method(cfg)
    load_checkpoint_weights(converted, out)
    assert converted.official_import == tested.official_import
    assert torch.equal(converted.pool_features, tested.pool_features)  # same seed: the same prompt image
    assert float(converted.rec_scale) == float(tested.rec_scale)
    assert torch.equal(converted.state_dict()["transformer.input_proj.weight"], tested.transformer.input_proj.weight)


def test_random_prompts_come_from_the_ground_truth_class_and_are_seeded():
    lite0 = FeatureExtractor("lite0", "tf_efficientnet_lite0", [0, 1, 2, 3], weights="package", normalization="tf")
    model = OneNIP(lite0, image_size=64, hidden=16, heads=2, ffn=16, encoder_layers=1, decoder_layers=1,
                   prompt_selection="random", seed=3).eval()  # fmt: skip
    model.pool_features = torch.randn(6, model.neck.channels, 4, 4)
    model.pool_category = torch.tensor([0, 0, 0, 1, 1, 1])
    model.pool_categories = ["a", "b"]
    feats = torch.randn(40, model.neck.channels, 4, 4)
    categories = ["a", "b"] * 20

    def draw():
        model._test_rng.manual_seed(3)  # what on_test_start does
        return model._pool_choice(feats, categories, "random")

    first = draw()
    assert torch.equal(model.pool_category[first], torch.tensor([0, 1] * 20))  # never another class's image
    assert len(set(first[0::2].tolist())) == 3 and len(set(first[1::2].tolist())) == 3  # every entry gets drawn
    assert torch.equal(first, draw())  # seeded: the same prompts on every test run
    oracle = model._pool_choice(feats, categories, "oracle")
    assert torch.equal(model.pool_category[oracle], torch.tensor([0, 1] * 20))
