"""The contract test over every shipped method on tiny settings: one run path, the one door for data, round trips.

Each method is trained (where it learns) and tested by the runner on one synthetic category at 64 px, then a trained
one is tested again from its checkpoint. What is asserted holds for every method alike: the runner hands data only
through `setup_fit` / `setup_test`, results.json carries the seven metrics in [0, 1] with the method's name, and the
checkpoint reproduces the run's metrics exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import open_dict

from anomaly_zoo.checkpoints.read import read_checkpoint
from anomaly_zoo.methods.base import AnomalyMethod
from anomaly_zoo.metrics import METRIC_NAMES
from anomaly_zoo.runner import run
from tests.methods.divad.test_divad import DIVAD_TINY

COMMON = ["dataset.categories=[logo]", "dataset.image_size=64", "eval.heatmaps_per_category=0"]
TINY_ONENIP = [
    "method.hidden=32", "method.heads=2", "method.ffn=64", "method.encoder_layers=1", "method.decoder_layers=1",
    "method.refiner_hidden=16", "method.max_epochs=1", "dataset.train_batch_size=8",
]  # fmt: skip
METHODS = {
    "patch_knn": ["method=patch_knn", "method.bank_size=256"],
    "padim": ["method=padim"],
    "patchcore": ["method=patchcore", "method.model.coreset_sampling_ratio=0.05", "+method.model.precision=float32"],
    "onenip": ["method=onenip", *TINY_ONENIP],
    "uniad": ["method=uniad", *TINY_ONENIP],
    "divad": [o for o in DIVAD_TINY if not o.startswith(("dataset.categories", "eval."))],
}


@pytest.fixture
def hook_calls(monkeypatch) -> list[str]:
    calls: list[str] = []
    setup_fit, setup_test = AnomalyMethod.setup_fit, AnomalyMethod.setup_test

    def record_fit(self, data):
        calls.append(f"fit:{len(data.dataset)}")
        setup_fit(self, data)

    def record_test(self, context):
        calls.append(f"test:{','.join(context.categories)}")
        setup_test(self, context)

    monkeypatch.setattr(AnomalyMethod, "setup_fit", record_fit)
    monkeypatch.setattr(AnomalyMethod, "setup_test", record_test)
    return calls


def _run(compose_cfg, config: str, overrides: list[str], out: Path, fit: bool) -> dict:
    cfg = compose_cfg(config, [*overrides, *COMMON])
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
    run(cfg, fit=fit)
    return json.loads((out / "results.json").read_text())


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_runs_through_the_one_door_and_its_checkpoint_round_trips(name, compose_cfg, tmp_path, hook_calls):
    trained = name != "divad"
    res = _run(compose_cfg, "train" if trained else "test", METHODS[name], tmp_path / "run", fit=trained)
    assert res["status"] == "ok" and res["method"] == name and list(res["categories"]) == ["logo"]
    assert set(res["mean"]) == set(METRIC_NAMES) and all(0.0 <= v <= 1.0 for v in res["mean"].values())
    fits = [c for c in hook_calls if c.startswith("fit:")]
    assert hook_calls[-1] == "test:logo" and len(fits) == int(trained)
    if not trained:
        return
    assert int(fits[0].split(":")[1]) > 0
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert read_checkpoint(ckpt)["anomaly_zoo"]["method"] == name  # the checkpoint knows what wrote it
    again = _run(compose_cfg, "test", [*METHODS[name], f"ckpt_path={ckpt}"], tmp_path / "again", fit=False)
    assert again["mean"] == res["mean"]


def test_the_frameworks_own_methods_predict_through_one_pure_torch_model(compose_cfg):
    """PatchKNN, OneNIP/UniAD and DIVAD each keep their inference maths in one `nn.Module` whose
    `forward(images, ...) -> (maps, scores)` is what `predict_batch` returns. PatchKNN's is checked against
    scikit-learn's nearest neighbours; OneNIP's against the paper's steps in tests/methods/onenip/test_torch_model.py.
    """
    import numpy as np
    import torch
    from sklearn.neighbors import NearestNeighbors

    from anomaly_zoo.methods.components import gaussian_blur, upsample_maps
    from anomaly_zoo.runner import instantiate_method

    torch.manual_seed(0)
    images = torch.rand(2, 3, 64, 64)
    knn = instantiate_method(compose_cfg("train", [*METHODS["patch_knn"], *COMMON])).eval()
    with torch.no_grad():
        bank = knn.model.embed(torch.rand(3, 3, 64, 64))
        knn.model.set_memory_bank(bank.permute(0, 2, 3, 1).reshape(-1, bank.shape[1]))
        maps, scores = knn.model(images)
        out = knn.predict_batch(images, ["logo", "logo"])
        emb = knn.model.embed(images)
    n, c, h, w = emb.shape
    dist, _ = (
        NearestNeighbors(n_neighbors=1)
        .fit(knn.model.memory_bank.numpy())
        .kneighbors(emb.permute(0, 2, 3, 1).reshape(-1, c).numpy())
    )
    expected = gaussian_blur(upsample_maps(torch.from_numpy(dist[:, 0]).float().view(n, h, w), (64, 64)), 4.0)
    np.testing.assert_allclose(maps.numpy(), expected.numpy(), atol=1e-4)
    assert torch.equal(scores, maps.flatten(1).amax(1))
    assert torch.equal(out["anomaly_maps"], maps) and torch.equal(out["pred_scores"], scores)

    divad = instantiate_method(compose_cfg("test", [*METHODS["divad"], *COMMON, "method.mask=none"])).eval()
    net = divad.torch_model()
    assert net.reconstructor is divad.reconstructor and net.extractor is divad.extractor
    maps, scores = net(images, [divad.prompt("logo")] * 2)
    out = divad.predict_batch(images, ["logo", "logo"])
    assert maps.shape == (2, 64, 64) and torch.allclose(out["anomaly_maps"], maps, atol=1e-6)
    assert torch.allclose(out["pred_scores"], scores, atol=1e-6)
    pooled = maps[:, None]
    for _ in range(8):  # the official score: 8 average poolings (kernel 8, stride 1), then the max
        pooled = torch.nn.functional.avg_pool2d(pooled, 8, stride=1)
    assert torch.allclose(scores, pooled.flatten(1).amax(1), atol=1e-6)
