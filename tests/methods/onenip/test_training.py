"""OneNIP and UniAD through the framework: fit/test, checkpoints (resume, corrupt files), DDP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import open_dict

from anomaly_zoo.checkpoints.read import CheckpointError, read_checkpoint
from anomaly_zoo.data.context import distinct_by_category
from anomaly_zoo.evaluation.threshold import recorded_threshold
from anomaly_zoo.runner import instantiate_method, run
from tests.helpers.cli import run_module

TINY = [
    "method=onenip",
    "dataset.categories=[logo,coin]",
    "dataset.image_size=64",
    "dataset.train_batch_size=4",
    "dataset.eval_batch_size=16",
    "method.hidden=32",
    "method.heads=2",
    "method.ffn=64",
    "method.encoder_layers=1",
    "method.decoder_layers=1",
    "method.refiner_hidden=16",
    "method.max_epochs=1",
    "eval.heatmaps_per_category=0",
]


def _run(compose_cfg, overrides, out_dir, fit=True, config="train"):
    cfg = compose_cfg(config, [*TINY, *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(out_dir)
    return cfg, run(cfg, fit=fit)


def test_fit_test_and_reload_with_oracle_prompts(compose_cfg, tmp_path):
    _, out = _run(compose_cfg, ["trainer.limit_train_batches=3"], tmp_path / "fit")
    res = json.loads(Path(out["results_path"]).read_text())
    assert res["method"] == "onenip" and res["prompt_selection"] == "cosine" and res["decoder"] == "dynamic"
    assert all(0 <= v <= 1 for v in res["mean"].values())
    ckpt = tmp_path / "fit" / "checkpoints" / "last.ckpt"
    state = read_checkpoint(ckpt)
    assert state["pool_categories"] == ["logo", "coin"] and state["state_dict"]["pool_features"].shape[0] == 2
    _, again = _run(compose_cfg, [f"ckpt_path={ckpt}", "method.prompt_selection=oracle"], tmp_path / "t", False, "test")
    assert json.loads(Path(again["results_path"]).read_text())["prompt_selection"] == "oracle"


def test_feature_statistics_match_the_training_features_and_survive_resume(compose_cfg, tmp_path):
    common = ["method.standardize_features=true", "trainer.limit_train_batches=1"]
    cfg, _ = _run(compose_cfg, common, tmp_path / "fit")
    state = read_checkpoint(tmp_path / "fit" / "checkpoints" / "last.ckpt")["state_dict"]
    assert bool(state["feature_statistics_fitted"])
    # Independent reference: every distinct training image through the same frozen backbone, numpy statistics.
    datamodule = instantiate(cfg.dataset)
    datamodule.setup("fit")
    dataset = datamodule.train_dataset
    indices = [i for pool in distinct_by_category(dataset.samples).values() for i in pool]
    method = instantiate_method(cfg).eval()
    with torch.no_grad():
        feats = method.features(torch.stack([dataset[i]["image"] for i in indices])).numpy()
    per_channel = feats.transpose(1, 0, 2, 3).reshape(feats.shape[1], -1)
    assert torch.allclose(state["transformer.feature_mean"], torch.from_numpy(per_channel.mean(1)), atol=1e-4)
    assert torch.allclose(state["transformer.feature_std"], torch.from_numpy(per_channel.std(1)).clamp_min(1e-3),
                          rtol=1e-4, atol=1e-4)  # fmt: skip
    # A resumed run keeps the checkpoint's statistics instead of refitting them.
    ckpt = tmp_path / "fit" / "checkpoints" / "last.ckpt"
    raw = torch.load(ckpt, weights_only=True)
    raw["state_dict"]["transformer.feature_mean"] += 1.0
    torch.save(raw, tmp_path / "shifted.ckpt")
    _run(compose_cfg, [*common, "method.max_epochs=2", f"ckpt_path={tmp_path / 'shifted.ckpt'}"], tmp_path / "resumed")
    resumed = read_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.ckpt")["state_dict"]
    assert torch.equal(resumed["transformer.feature_mean"], raw["state_dict"]["transformer.feature_mean"])
    # A checkpoint written before the statistics existed still loads (as identity statistics).
    for key in ("transformer.feature_mean", "transformer.feature_std", "feature_statistics_fitted"):
        del raw["state_dict"][key]
    torch.save(raw, tmp_path / "older.ckpt")
    _, out = _run(compose_cfg, [f"ckpt_path={tmp_path / 'older.ckpt'}"], tmp_path / "older", False, "test")
    assert Path(out["results_path"]).is_file()


def test_uniad_is_the_no_prompt_ablation(compose_cfg, tmp_path):
    cfg, out = _run(compose_cfg, ["method=uniad", "trainer.limit_train_batches=2"], tmp_path)
    res = json.loads(Path(out["results_path"]).read_text())
    assert res["method"] == "uniad" and res["decoder"] == "query" and "prompt_selection" not in res
    assert cfg.method.restoration is False and cfg.method.refiner is False


@pytest.mark.parametrize(
    "loading", [[], ["dataset.num_workers=2", "method.cache_features=true"]], ids=["in_process", "workers_and_cache"]
)
def test_resume_gives_the_same_weights_as_one_run(compose_cfg, tmp_path, loading):
    """Also with the demo's data settings: two loader workers (as by default) and the feature cache."""
    common = ["method.max_epochs=2", "trainer.limit_train_batches=2", "trainer.deterministic=true", *loading]
    _run(compose_cfg, common, tmp_path / "full")
    _run(compose_cfg, [*common, "method.max_epochs=1"], tmp_path / "half")
    half = tmp_path / "half" / "checkpoints" / "last.ckpt"
    _run(compose_cfg, [*common, f"ckpt_path={half}"], tmp_path / "resumed")
    full = read_checkpoint(tmp_path / "full" / "checkpoints" / "last.ckpt")["state_dict"]
    resumed = read_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.ckpt")["state_dict"]
    assert full.keys() == resumed.keys()
    for key in full:
        assert torch.equal(full[key], resumed[key]), key


def test_corrupt_or_truncated_checkpoint_is_named(compose_cfg, tmp_path):
    _run(compose_cfg, ["trainer.limit_train_batches=1"], tmp_path / "fit")
    good = (tmp_path / "fit" / "checkpoints" / "last.ckpt").read_bytes()
    bad = tmp_path / "truncated.ckpt"
    bad.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*truncated.ckpt.*corrupt or truncated"):
        _run(compose_cfg, [f"ckpt_path={bad}"], tmp_path / "t", False, "test")
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        read_checkpoint(tmp_path / "missing.ckpt")


@pytest.mark.slow
def test_two_process_ddp_ranks_end_with_identical_weights(synthetic_root, tmp_path):
    run_module("tests.helpers.ddp_train", str(synthetic_root), str(tmp_path))
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert rank0.keys() == rank1.keys() and "rec_scale" in rank0 and "transformer.input_proj.weight" in rank0
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key


def test_unknown_class_images_get_a_prompt_by_similarity(compose_cfg, tmp_path):
    from anomaly_zoo.checkpoints.model import load_checkpoint_weights
    from anomaly_zoo.data import AnomalyDataModule
    from anomaly_zoo.runner import instantiate_method

    cfg, _ = _run(compose_cfg, ["trainer.limit_train_batches=1"], tmp_path)
    method = instantiate_method(cfg)
    load_checkpoint_weights(method, tmp_path / "checkpoints" / "last.ckpt")
    dm = AnomalyDataModule("synthetic", cfg.dataset.root, categories=["logo", "coin"], image_size=64, num_workers=0)
    dm.setup()
    batch = next(iter(dm.test_dataloader()))
    out = method.eval().predict_batch(batch["image"], [""] * len(batch["path"]))  # predict: class unknown
    assert set(out["categories"]) <= {"logo", "coin"} and len(out["categories"]) == len(batch["path"])
    assert out["anomaly_maps"].shape == (len(batch["path"]), 64, 64)


def test_validation_split_gives_best_checkpoint_threshold_and_transductive_option(compose_cfg, tmp_path):
    _run(compose_cfg, ["dataset.val_ratio=0.2", "trainer.limit_train_batches=2", "method.max_epochs=2"], tmp_path / "f")
    best = read_checkpoint(tmp_path / "f" / "checkpoints" / "best.ckpt")
    threshold = recorded_threshold(best)
    assert threshold["rule"] == "false_alarm_rate" and threshold["validation_images"] == 12
    ckpt = f"ckpt_path={tmp_path / 'f' / 'checkpoints' / 'last.ckpt'}"
    _, calibrated = _run(compose_cfg, [ckpt], tmp_path / "c", False, "test")
    _, transductive = _run(compose_cfg, [ckpt, "method.score_scaling=transductive"], tmp_path / "t", False, "test")
    res = json.loads(Path(transductive["results_path"]).read_text())
    assert res["score_scaling"] == "transductive"  # flagged in results.json: it reads test data
    assert calibrated["per_category"] != transductive["per_category"]
