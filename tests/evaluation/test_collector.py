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


def _resident_kib(path) -> int:
    """This process's resident pages of the mapping of `path` (Linux /proc/self/smaps)."""
    from pathlib import Path

    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if "-" in line.split(" ")[0]:
            inside = line.rstrip().endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/smaps"), reason="needs Linux /proc/self/smaps")
def test_memory_mapped_buffer_releases_its_pages_and_scores_as_in_ram(monkeypatch):
    from pathlib import Path

    from anomaly_zoo.metrics import compute_category_metrics

    monkeypatch.setattr(collector, "MEMMAP_THRESHOLD_BYTES", 1000)
    monkeypatch.setattr(PredictionBuffer, "RELEASE_EVERY_BYTES", 10**12)  # released by hand below
    rng = np.random.default_rng(1)
    n = 40
    maps = rng.random((n, 64, 64), dtype=np.float32)
    masks = (rng.random((n, 64, 64)) > 0.97).astype(np.uint8)
    masks[:12] = 0  # normal images
    buf = PredictionBuffer(n, (64, 64))
    buf.put(np.arange(n), maps, masks, maps.max(axis=(1, 2)))
    path = Path(buf._tmp.name) / "maps.npy"
    assert _resident_kib(path) >= maps.nbytes // 1024 // 2  # what was just written is resident
    buf.release()
    assert _resident_kib(path) == 0
    cats = ["a"] * 20 + ["b"] * 20
    labels = masks.reshape(n, -1).any(1).astype(int)
    got = compute_category_metrics(buf.scores, labels, buf.maps, buf.masks, cats)
    assert _resident_kib(path) == 0  # each category read into RAM, the mapping released
    assert got == compute_category_metrics(buf.scores, labels, maps, masks, cats)
    assert np.array_equal(collector.any_per_row(buf.masks), labels.astype(bool))


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
