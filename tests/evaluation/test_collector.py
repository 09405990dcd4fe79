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
    assert _resident_kib(path) == 0  # each category read in place, its pages released afterwards
    assert got == compute_category_metrics(buf.scores, labels, maps, masks, cats)
    assert np.array_equal(buf.mask_any, labels.astype(bool))  # kept at write time: no mask is read back for it


def _stand_in(n: int, categories: list[str], labels: np.ndarray, size: int, limit: float = 1.0):
    """A trainer and data module as far as the collector's test hooks read them (one process)."""
    from types import SimpleNamespace

    from anomaly_zoo.data.samples import Sample

    samples = [Sample(f"/t/{c}/{i}.png", None, int(labels[i]), c) for i, c in enumerate(categories)]
    dataset = type("Split", (), {"size": (size, size), "samples": samples, "__len__": lambda self: n})()
    return SimpleNamespace(datamodule=SimpleNamespace(test_dataset=dataset, root=None, val_dataset=None),
                           is_global_zero=True, world_size=1, logger=None, limit_test_batches=limit)  # fmt: skip


def _case(seed: int, categories: list[str], size: int, limit: float = 1.0):
    """Random maps and masks (every third image normal), their labels, a stand-in trainer and a started
    collector."""
    from anomaly_zoo.evaluation.collector import EvaluationCollector

    rng = np.random.default_rng(seed)
    n = len(categories)
    maps = rng.random((n, size, size), dtype=np.float32)
    masks = (rng.random((n, size, size)) > 0.93).astype(np.uint8)
    masks[::3] = 0
    labels = masks.reshape(n, -1).any(1).astype(int)
    trainer = _stand_in(n, categories, labels, size, limit)
    coll = EvaluationCollector(bootstrap_resamples=0)
    coll.on_test_start(trainer, None)
    return maps, masks, labels, trainer, coll


def _feed(coll, trainer, maps: np.ndarray, masks: np.ndarray, batch: list[int]) -> None:
    import torch

    outputs = {"anomaly_maps": torch.from_numpy(maps[batch]), "pred_scores": torch.from_numpy(maps[batch].max((1, 2)))}
    coll.on_test_batch_end(
        trainer, None, outputs, {"index": torch.tensor(batch), "mask": torch.from_numpy(masks[batch])}, 0
    )


@pytest.mark.parametrize("memmapped", [False, True])
def test_each_category_is_scored_when_its_last_image_arrives_as_one_scoring_at_the_end(monkeypatch, memmapped):
    from anomaly_zoo.metrics import compute_category_metrics

    monkeypatch.setattr(collector, "MEMMAP_THRESHOLD_BYTES", 1000 if memmapped else 10**12)
    categories = ["a"] * 12 + ["b"] * 10 + ["c"] * 8
    maps, masks, labels, trainer, coll = _case(3, categories, 32)
    seen = []
    # batches as a padded sampler sends them: one image twice, categories "a" and "b" finishing mid-way
    for batch in ([0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11, 11], [12, 13, 14], [15, 16, 17, 18, 19, 20, 21, 22],
                  [23, 24, 25, 26, 27, 28, 29]):  # fmt: skip
        _feed(coll, trainer, maps, masks, batch)
        seen.append(sorted(coll.per_category))
    assert seen == [[], ["a"], ["a"], ["a", "b"], ["a", "b", "c"]]  # scored as each category's last image came
    coll.on_test_epoch_end(trainer, None)
    expected = compute_category_metrics(maps.max((1, 2)), labels, maps, masks, categories)
    assert (coll.per_category, coll.mean) == expected
    assert coll.buffer is not None and coll.buffer.memmapped == memmapped


def test_with_limited_batches_the_incomplete_category_is_scored_on_its_scored_images(monkeypatch):
    from anomaly_zoo.metrics import compute_category_metrics

    categories = ["a"] * 10 + ["b"] * 10
    maps, masks, labels, trainer, coll = _case(4, categories, 16, limit=0.75)
    _feed(coll, trainer, maps, masks, list(range(15)))  # all of "a", half of "b"
    assert list(coll.per_category) == ["a"]
    coll.on_test_epoch_end(trainer, None)
    expected = compute_category_metrics(maps[:15].max((1, 2)), labels[:15], maps[:15], masks[:15], categories[:15])
    assert (coll.per_category, coll.mean) == expected


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
