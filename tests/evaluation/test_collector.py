"""Shared evaluation: memory-mapped buffers and data-parallel testing give exactly the single-process result."""

from __future__ import annotations

import json

import numpy as np
import pytest

from anomaly_zoo.evaluation import collector
from anomaly_zoo.evaluation.collector import PredictionBuffer
from tests.helpers.cli import run_module


def test_buffer_spills_to_a_memory_map_above_the_threshold(monkeypatch):
    monkeypatch.setattr(collector, "MEMMAP_THRESHOLD_BYTES", 1000)
    rng = np.random.default_rng(0)
    maps = rng.random((6, 16, 16), dtype=np.float32)
    buf = PredictionBuffer(6, (16, 16))
    assert isinstance(buf.maps, np.memmap)
    for idx in (np.array([4, 5, 0]), np.array([1, 2, 3])):  # out of order, as shards arrive
        buf.put(idx, maps[idx], (maps[idx] > 0.5).astype(np.uint8), maps[idx].max(axis=(1, 2)))
    assert buf.filled.all() and np.array_equal(buf.maps, maps)
    monkeypatch.setattr(collector, "MEMMAP_THRESHOLD_BYTES", 10**9)
    assert not isinstance(PredictionBuffer(6, (16, 16)).maps, np.memmap)


@pytest.mark.slow
def test_two_process_ddp_evaluation_equals_single_process(synthetic_root, tmp_path):
    common = [
        f"dataset.root={synthetic_root}",
        "dataset.categories=[logo,grass]",
        "dataset.image_size=96",
        "dataset.num_workers=0",
        "dataset.eval_batch_size=5",  # 46 test images: uneven shards, padded by the sampler
        "~method",
        "+method._target_=tests.helpers.pixel_method.PixelDeviation",
        "+method.name=pixel_deviation",
        "trainer.enable_progress_bar=false",
        "eval.heatmaps_per_category=0",
    ]
    run_module("anomaly_zoo.test", *common, f"hydra.run.dir={tmp_path}/single")
    ddp = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", f"hydra.run.dir={tmp_path}/ddp"]
    run_module("anomaly_zoo.test", *common, *ddp)
    one = json.loads((tmp_path / "single" / "results.json").read_text())
    two = json.loads((tmp_path / "ddp" / "results.json").read_text())
    assert two["config"]["trainer"]["devices"] == 2 and one["config"]["trainer"]["devices"] == 1
    assert two["categories"] == one["categories"]  # exactly, not approximately
    assert 0.0 < one["mean"]["P-AUROC"] < 1.0
