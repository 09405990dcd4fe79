"""OneNIP/UniAD building blocks against the paper's and the official code's definitions."""

from __future__ import annotations

import pytest
import torch

from anomaly_zoo.backbones import FeatureExtractor
from anomaly_zoo.methods.onenip.torch_model import (
    EncoderLayer,
    ReconstructionTransformer,
    Refiner,
    StrideSixteenNeck,
    TwoWayDecoderLayer,
    add_feature_jitter,
    convert_row_col_layout,
    dice_loss,
    neighbour_mask,
)


def test_neighbour_mask_blocks_the_window_around_each_token():
    mask = neighbour_mask(14, 14, (7, 7))
    centre = mask[7 * 14 + 7].view(14, 14)
    assert centre[4:11, 4:11].all() and centre.sum() == 49  # 7x7 blocked, the rest free
    corner = mask[0].view(14, 14)
    assert corner[:4, :4].all() and corner.sum() == 16
    # Even windows block window+1 (half-width window // 2), as the official code at 256 px (8 → 9x9).
    assert neighbour_mask(16, 16, (8, 8))[8 * 16 + 8].sum() == 81


def test_masked_encoder_cannot_see_neighbours():
    torch.manual_seed(0)
    layer = EncoderLayer(16, 2, 32, dropout=0.0).eval()
    mask = neighbour_mask(6, 6, (3, 3))
    x = torch.randn(1, 36, 16, requires_grad=True)
    out = layer(x, torch.zeros(1, 36, 16), mask)
    (grad,) = torch.autograd.grad((out[0, 14] * torch.randn(16)).sum(), x)  # token (2, 2); not a plain sum:
    # a LayerNorm output sums to a constant
    per_token = grad[0].abs().sum(-1).view(6, 6)
    assert per_token[2, 2] > 0  # itself, through the residual
    window = per_token[1:4, 1:4].clone()
    window[1, 1] = 0
    assert torch.all(window == 0)  # its 3x3 neighbours are invisible
    assert per_token[5, 5] > 0  # far tokens are visible


def test_prefix_residual_reproduces_the_pre_fix_decoder():
    torch.manual_seed(0)
    fixed = TwoWayDecoderLayer(16, 2, 32, 0.0, "fixed").eval()
    prefix = TwoWayDecoderLayer(16, 2, 32, 0.0, "prefix").eval()
    prefix.load_state_dict(fixed.state_dict())
    prompt, image, pos = torch.randn(2, 9, 16), torch.randn(2, 9, 16), torch.randn(1, 9, 16)
    p1, i1 = fixed(prompt, image, pos, None)
    p2, i2 = prefix(prompt, image, pos, None)
    assert torch.allclose(p1, p2) and not torch.allclose(i1, i2)
    # By hand: the image stream gets the prompt stream's MLP output (the bug), not the attention output.
    attn = fixed.prompt_to_image(prompt + pos, image + pos, image, need_weights=False)[0]
    after_norm1 = fixed.norm1(prompt + attn)
    assert torch.allclose(i2, fixed.norm3(image + fixed.mlp(after_norm1)), atol=1e-6)
    with pytest.raises(ValueError, match="decoder_residual"):
        TwoWayDecoderLayer(16, 2, 32, 0.0, "other")


@pytest.mark.parametrize("decoder", ["dynamic", "static", "query"])
def test_reconstruction_shapes_and_prompt_dependence(decoder):
    torch.manual_seed(0)
    model = ReconstructionTransformer(24, (4, 4), decoder, hidden=16, heads=2, ffn=32, encoder_layers=1,
                                      decoder_layers=2, dropout=0.0).eval()  # fmt: skip
    image = model.encode(torch.randn(3, 16, 24))
    prompt_a, prompt_b = model.encode(torch.randn(3, 16, 24)), model.encode(torch.randn(3, 16, 24))
    out_a = model.decode(image, prompt_a if model.uses_prompt else None)
    assert out_a.shape == (3, 16, 24)
    if decoder == "query":
        assert not model.uses_prompt
    else:  # the prompt guides the reconstruction
        assert not torch.allclose(out_a, model.decode(image, prompt_b))
    with pytest.raises(ValueError, match="feature grid"):
        model.tokens(torch.randn(1, 24, 5, 5))


def test_channels_follow_the_backbone_not_a_constant():
    backbone = FeatureExtractor("lite0", "tf_efficientnet_lite0", [0, 1, 2, 3], weights="package", normalization="tf")
    neck = StrideSixteenNeck(backbone)
    feats = neck(torch.rand(2, 3, 64, 64))
    assert neck.channels == 16 + 24 + 40 + 112 == feats.shape[1] and feats.shape[-2:] == (4, 4)


def test_refiner_upsamples_to_the_image():
    logits = Refiner(24, 8)(torch.rand(2, 24, 4, 4), (64, 64))
    assert logits.shape == (2, 64, 64)


def test_dice_loss_hand_computed():
    target = torch.zeros(1, 2, 2)
    target[0, 0, 0] = 1
    perfect = torch.full((1, 2, 2), -50.0)
    perfect[0, 0, 0] = 50.0
    zero_logits = torch.zeros(1, 2, 2)  # p = 0.5 everywhere
    # Paper, Eq. 7 (overlap doubled): 0 when perfect; 1 - (2*0.5 + 1) / (4*0.25 + 1 + 1) = 1/3 at p = 0.5.
    assert dice_loss(perfect, target, doubled=True).item() == pytest.approx(0.0, abs=1e-6)
    assert dice_loss(zero_logits, target, doubled=True).item() == pytest.approx(1 / 3)
    # Official DiceLoss (the default; no factor 2): 1 - (1 + 1) / (1 + 1 + 1) = 1/3 even when perfect, and
    # 1 - (0.5 + 1) / (1 + 1 + 1) = 1/2 at p = 0.5.
    assert dice_loss(perfect, target).item() == pytest.approx(1 / 3, abs=1e-6)
    assert dice_loss(zero_logits, target).item() == pytest.approx(1 / 2)


def test_official_initialisation():
    torch.manual_seed(0)
    onenip = ReconstructionTransformer(272, (14, 14), "dynamic")
    uniad = ReconstructionTransformer(272, (14, 14), "query")
    refiner = Refiner(272)
    linears = [m for m in [*onenip.modules(), *refiner.modules()] if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    assert all(m.bias is None or not m.bias.any() for m in linears)  # zero biases (PyTorch's default is not)
    # xavier-uniform bound sqrt(6 / (fan_in + fan_out)) on the input projection (272 -> 256)
    bound = (6 / (272 + 256)) ** 0.5
    w = onenip.input_proj.weight
    assert w.abs().max() <= bound and w.abs().max() > 0.95 * bound
    pos = onenip.pos.row.weight
    assert pos.min() >= 0 and pos.max() <= 1 and 0.4 < pos.mean() < 0.6  # U(0, 1)
    queries = uniad.decoder[0].queries.weight
    assert 0.95 < queries.std() < 1.05  # N(0, 1), not xavier (std ~0.06 here)
    conv = refiner.body[0].weight  # xavier, not PyTorch's kaiming-uniform default
    assert conv.abs().max() <= (6 / ((272 + 128) * 9)) ** 0.5


def test_position_embedding_is_column_then_row():
    pos = ReconstructionTransformer(
        8, (2, 3), "query", hidden=4, heads=1, ffn=8, encoder_layers=1, decoder_layers=1
    ).pos
    table = pos()  # token (y, x) = y * 3 + x
    assert torch.equal(table[1 * 3 + 2], torch.cat([pos.col.weight[2], pos.row.weight[1]]))


def test_final_attention_output_has_dropout_in_training():
    torch.manual_seed(0)
    model = ReconstructionTransformer(8, (2, 2), "dynamic", hidden=8, heads=1, ffn=8, encoder_layers=1,
                                      decoder_layers=1, dropout=0.1)  # fmt: skip
    assert model.final_drop.p == 0.1
    model.decoder[0].eval()  # only the final block in training mode
    model.final_attn.dropout = 0.0
    x = torch.randn(1, 4, 8)
    outs = [model.decode(x, x) for _ in range(2)]
    assert not torch.allclose(*outs)
    model.eval()
    assert torch.allclose(model.decode(x, x), model.decode(x, x))


def test_row_col_checkpoints_convert_to_the_same_function():
    torch.manual_seed(0)
    for decoder in ("dynamic", "query"):
        model = ReconstructionTransformer(24, (3, 4), decoder, hidden=16, heads=2, ffn=16, encoder_layers=1,
                                          decoder_layers=2, dropout=0.0).eval()  # fmt: skip
        tokens, prompt = torch.randn(2, 12, 24), torch.randn(2, 12, 24)

        def run(m, tokens=tokens, prompt=prompt):
            return m.decode(m.encode(tokens), m.encode(prompt) if m.uses_prompt else None)

        # the layout before: [row | col]
        legacy_pos = lambda p=model.pos: torch.cat(  # noqa: E731
            [p.row.weight[:, None].expand(3, 4, -1), p.col.weight[None].expand(3, 4, -1)], -1
        ).reshape(12, -1)
        original = model.pos.forward
        model.pos.forward = legacy_pos
        expected = run(model)
        model.pos.forward = original
        assert not torch.allclose(run(model), expected, atol=1e-3)  # the layouts really differ
        state = {f"transformer.{k}": v.clone() for k, v in model.state_dict().items()}
        convert_row_col_layout(state, model, "transformer.")
        model.load_state_dict({k.removeprefix("transformer."): v for k, v in state.items()})
        torch.testing.assert_close(run(model), expected, atol=1e-5, rtol=1e-5)


def test_feature_jitter_scale_matches_uniad():
    torch.manual_seed(0)
    tokens = torch.randn(4, 100, 32) * 3
    noise = add_feature_jitter(tokens, 20.0, 1.0) - tokens
    unit = noise / (tokens.norm(dim=-1, keepdim=True) / 32 * 20.0)
    assert unit.std().item() == pytest.approx(1.0, abs=0.05)
    assert torch.equal(add_feature_jitter(tokens, 20.0, 0.0), tokens)


def test_feature_statistics_are_a_reparameterisation_of_the_projections():
    """Standardising around input_proj/output_proj equals a plain model whose projections absorb the statistics."""
    torch.manual_seed(0)
    kwargs = dict(hidden=16, heads=2, ffn=32, encoder_layers=1, decoder_layers=1, dropout=0.0)
    standardised = ReconstructionTransformer(6, (3, 3), "dynamic", **kwargs).eval()
    mean, std = torch.randn(6) * 3, torch.rand(6) * 4 + 0.5
    standardised.set_feature_statistics(mean, std)
    plain = ReconstructionTransformer(6, (3, 3), "dynamic", **kwargs).eval()
    state = {k: v.clone() for k, v in standardised.state_dict().items()}
    state["feature_mean"], state["feature_std"] = torch.zeros(6), torch.ones(6)
    w_in, b_in = state["input_proj.weight"], state["input_proj.bias"]
    state["input_proj.weight"], state["input_proj.bias"] = w_in / std, b_in - (w_in / std) @ mean
    w_out, b_out = state["output_proj.weight"], state["output_proj.bias"]
    state["output_proj.weight"], state["output_proj.bias"] = w_out * std[:, None], b_out * std + mean
    plain.load_state_dict(state)
    x, p = torch.randn(2, 9, 6) * 5, torch.randn(2, 9, 6) * 5
    a = standardised.decode(standardised.encode(x), standardised.encode(p))
    b = plain.decode(plain.encode(x), plain.encode(p))
    assert torch.allclose(a, b, atol=1e-4)
    with pytest.raises(ValueError, match="shape"):
        standardised.set_feature_statistics(torch.zeros(5), torch.ones(5))


def test_channels_last_changes_the_layout_not_the_result():
    from anomaly_zoo.methods.onenip import OneNIP

    def build(channels_last: bool) -> OneNIP:
        torch.manual_seed(0)
        backbone = FeatureExtractor("lite0", "tf_efficientnet_lite0", [0, 1, 2, 3], "package", normalization="tf")
        small = dict(hidden=16, heads=2, ffn=32, encoder_layers=1, decoder_layers=1, dropout=0.0, refiner_hidden=8)
        return OneNIP(backbone, image_size=64, channels_last=channels_last, **small).eval()

    plain, nhwc = build(False), build(True)
    conv = next(m for m in nhwc.neck.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        outs = []
        for model in (plain, nhwc):
            feats = model.features(images)
            rec = model.reconstruct(feats, feats, jitter=False)
            outs.append(model.score_maps(feats, rec, (64, 64)))
    assert torch.allclose(outs[0], outs[1], atol=1e-4)


def test_the_pure_torch_model_gives_the_methods_maps_and_scores_and_owns_nothing_twice():
    """OneNIP.torch_model(): one nn.Module, forward(images) -> (maps, scores), equal to predict_batch with the
    cosine prompt choice (here computed by hand from the paper's steps), sharing the method's weights and pool."""
    import torch.nn.functional as F

    from anomaly_zoo.methods.onenip import OneNIP

    torch.manual_seed(0)
    backbone = FeatureExtractor("lite0", "tf_efficientnet_lite0", [0, 1, 2, 3], "package", normalization="tf")
    small = dict(hidden=16, heads=2, ffn=32, encoder_layers=1, decoder_layers=1, dropout=0.0, refiner_hidden=8)
    method = OneNIP(backbone, image_size=64, alpha=0.3, image_score_pool=4, **small).eval()
    pool_images, images = torch.rand(3, 3, 64, 64), torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        method.pool_features = method.features(pool_images)
        method.pool_category = torch.tensor([0, 0, 1])
        method.pool_categories = ["a", "b"]
        method.rec_scale = torch.tensor(2.5)
        net = method.torch_model()
        maps, scores = net(images)
        out = method.predict_batch(images, ["", ""])  # unknown classes: cosine over the whole pool
        # by hand: the most similar pool entry, F̂, S_rec, M̂, S = (1 - a) S_rec + a c M̂, max of the 4x4-pooled S
        feats = method.features(images)
        sims = F.normalize(feats.flatten(1), dim=1) @ F.normalize(method.pool_features.flatten(1), dim=1).T
        rec = method.reconstruct(feats, method.pool_features[sims.argmax(1)], jitter=False)
        s_rec = F.interpolate((rec - feats).norm(dim=1, keepdim=True), (64, 64), mode="bilinear", align_corners=True)
        refined = torch.sigmoid(method.refiner((rec - feats).abs(), (64, 64)))
        expected = 0.7 * s_rec[:, 0] + 0.3 * 2.5 * refined
    assert torch.allclose(maps, expected, atol=1e-5) and torch.equal(maps, out["anomaly_maps"])
    assert torch.allclose(scores, F.avg_pool2d(expected[:, None], 4, stride=1).flatten(1).amax(1), atol=1e-5)
    assert torch.equal(scores, out["pred_scores"])
    assert net.pool_features.data_ptr() == method.pool_features.data_ptr()
    assert net.neck is method.neck and net.transformer is method.transformer
    assert not any(k.startswith("torch_model") for k in method.state_dict())  # the weights are registered once
    assert set(net.state_dict()) <= {k for k in method.state_dict()}  # its own keys are a subset: exportable
