"""AnomalyMetrics (the suite as a torchmetrics Metric): the suite's values, sklearn's, reset, DDP, input errors,
a Lightning test loop."""

from __future__ import annotations

import json
import math
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from anomaly_zoo.metrics import METRIC_NAMES, AnomalyMetrics, compute_category_metrics, compute_metrics
from tests.metrics.test_suite import random_case, sklearn_f1max, slow_pro

CATS = ("a", "b", "c")
BATCHES = (5, 1, 7, 4)  # uneven batch sizes, 17 images in all


def dataset(n: int = 17):
    """Three categories of random_case, interleaved (categories are not contiguous), as numpy arrays."""
    parts = [random_case(seed, n=6, levels=levels) for seed, levels in ((30, None), (31, 5), (32, 12))]
    scores, labels, maps, masks = (np.concatenate(x) for x in zip(*parts, strict=True))
    cats = np.repeat(CATS, 6)
    order = np.random.default_rng(0).permutation(len(scores))[:n]
    return scores[order], labels[order], maps[order], masks[order], cats[order].tolist()


def batches(arrays, sizes=BATCHES):
    start = 0
    for size in sizes:
        yield [a[start : start + size] for a in arrays]
        start += size


def feed(metric: AnomalyMetrics, scores, labels, maps, masks, cats, indices=None, sizes=BATCHES) -> None:
    columns = [scores, labels, maps, masks, cats] + ([] if indices is None else [indices])
    for s, y, m, k, c, *i in batches(columns, sizes):
        metric.update(
            torch.from_numpy(m),
            torch.from_numpy(s),
            torch.from_numpy(k),
            labels=torch.from_numpy(y),
            categories=list(c) if metric.categories else None,
            indices=torch.as_tensor(i[0]) if i else None,
        )


def suite_flat(scores, labels, maps, masks, cats) -> dict[str, float]:
    per_category, mean = compute_category_metrics(scores, labels, maps, masks, cats)
    return {**mean, **{f"{c}/{k}": v for c in CATS if c in per_category for k, v in per_category[c].items()}}


def test_values_equal_the_suite_exactly():
    scores, labels, maps, masks, cats = dataset()
    metric = AnomalyMetrics(categories=CATS)
    feed(metric, scores, labels, maps, masks, cats)
    out = metric.compute()
    expected = suite_flat(scores, labels, maps, masks, cats)
    assert out == expected and list(out) == list(expected)  # same keys in the same order, same floats
    assert list(out)[: len(METRIC_NAMES)] == list(METRIC_NAMES) and len(out) == 4 * len(METRIC_NAMES)

    one_group = AnomalyMetrics()
    feed(one_group, scores, labels, maps, masks, cats)
    assert one_group.compute() == compute_metrics(scores, labels, maps, masks)


@pytest.mark.parametrize("protocol", ["onenip_official", "divad_official"])
def test_an_official_protocol_gives_the_suites_values_under_it(protocol):
    scores, labels, maps, masks, cats = dataset()
    metric = AnomalyMetrics(categories=CATS, protocol=protocol)
    feed(metric, scores, labels, maps, masks, cats)
    per_category, mean = compute_category_metrics(scores, labels, maps, masks, cats, protocol=protocol)
    assert metric.compute() == {**mean, **{f"{c}/{k}": v for c in CATS for k, v in per_category[c].items()}}
    with pytest.raises(ValueError, match="valid: exact, onenip_official, divad_official"):
        AnomalyMetrics(protocol="flipped")


def test_values_equal_sklearn_and_the_slow_pro():
    scores, labels, maps, masks, cats = dataset()
    metric = AnomalyMetrics(categories=CATS)
    feed(metric, scores, labels, maps, masks, cats)
    out = metric.compute()
    cats = np.asarray(cats)
    reference = {}
    for c in CATS:
        i = cats == c
        y, s, pix_y, pix_s = labels[i], scores[i], masks[i].ravel(), maps[i].ravel()
        reference[c] = {
            "I-AUROC": roc_auc_score(y, s),
            "I-AP": average_precision_score(y, s),
            "I-F1max": sklearn_f1max(y, s),
            "P-AUROC": roc_auc_score(pix_y, pix_s),
            "P-AP": average_precision_score(pix_y, pix_s),
            "P-F1max": sklearn_f1max(pix_y, pix_s),
            "PRO": slow_pro(maps[i], masks[i]),
        }
    for name in METRIC_NAMES:
        tol = 1e-12 if name.startswith("I-") else 1e-9
        for c in CATS:
            assert out[f"{c}/{name}"] == pytest.approx(reference[c][name], abs=tol), (c, name)
        assert out[name] == pytest.approx(np.mean([reference[c][name] for c in CATS]), abs=tol), name


def test_labels_default_to_whether_the_mask_has_defect_pixels():
    scores, labels, maps, masks, _ = dataset()
    metric = AnomalyMetrics()
    metric.update(torch.from_numpy(maps), torch.from_numpy(scores), torch.from_numpy(masks))
    assert metric.compute() == compute_metrics(scores, labels, maps, masks)


def test_reset_forgets_everything():
    scores, labels, maps, masks, cats = dataset()
    metric = AnomalyMetrics(categories=CATS)
    feed(metric, scores, labels, maps, masks, cats)
    metric.compute()
    metric.reset()
    with pytest.raises(RuntimeError, match="update"), pytest.warns(UserWarning):
        metric.compute()
    sub = slice(0, 12)
    feed(metric, scores[sub], labels[sub], maps[sub], masks[sub], cats[sub], sizes=(12,))
    assert metric.compute() == suite_flat(scores[sub], labels[sub], maps[sub], masks[sub], cats[sub])


def test_indices_order_the_images_and_drop_repeats():
    scores, labels, maps, masks, cats = dataset()
    # As two sampler shards would arrive: interleaved, the last one padded with a repeat of image 0.
    order = np.r_[np.arange(0, 17, 2), np.arange(1, 17, 2), 0]
    metric = AnomalyMetrics(categories=CATS)
    columns = [a[order] for a in (scores, labels, maps, masks)]
    feed(metric, *columns, [cats[i] for i in order], indices=order, sizes=(6, 3, 9))
    assert metric.compute() == suite_flat(scores, labels, maps, masks, cats)  # exactly, PRO's rounding included


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world_size: int, out_dir: str) -> None:
    """One rank: (1) its contiguous half without indices, (2) a DistributedSampler shard (padded) with indices."""
    from torch.utils.data import DistributedSampler

    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        data = dataset()
        half = slice(0, 9) if rank == 0 else slice(9, 17)
        contiguous = AnomalyMetrics(categories=CATS)
        feed(contiguous, *(a[half] for a in data), sizes=(5, 4) if rank == 0 else (2, 6))
        shard = np.array(list(DistributedSampler(range(17), world_size, rank, shuffle=True, seed=0)))
        sampled = AnomalyMetrics(categories=CATS)
        feed(sampled, *(np.asarray(a)[shard] for a in data), indices=shard, sizes=(4, 5))  # 9 each: 1 repeat
        result = {"contiguous": contiguous.compute(), "sampler": sampled.compute(), "shard": shard.tolist()}
        Path(out_dir, f"{rank}.json").write_text(json.dumps(result))
    finally:
        torch.distributed.destroy_process_group()


def test_ddp_two_gloo_processes_equal_one_process(tmp_path, monkeypatch):
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    # fork: the ranks inherit the imported modules (spawn would import torch + torchmetrics again, ~10 s each)
    ctx = torch.multiprocessing.start_processes(
        _ddp_worker, args=(2, str(tmp_path)), nprocs=2, join=False, start_method="fork"
    )
    deadline = time.monotonic() + 120
    while not ctx.join(timeout=2):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("the two DDP processes did not finish within 120 s")
    ranks = [json.loads((tmp_path / f"{r}.json").read_text()) for r in range(2)]
    shards = ranks[0]["shard"] + ranks[1]["shard"]
    assert len(shards) == 18 and set(shards) == set(range(17))  # the sampler padded with a repeat
    expected = suite_flat(*dataset())
    for result in ranks:  # every rank gets the whole set's values, exactly
        assert result["contiguous"] == expected
        assert result["sampler"] == expected


def _kwargs(n: int = 6, size: int = 8) -> dict:
    g = torch.Generator().manual_seed(0)
    masks = (torch.rand(n, size, size, generator=g) > 0.8).to(torch.uint8)
    return {"anomaly_maps": torch.rand(n, size, size, generator=g), "pred_scores": torch.rand(n), "masks": masks}


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda k: {**k, "anomaly_maps": k["anomaly_maps"][:, None]}, r"^anomaly_maps: expected shape \(N, H, W\)"),
        (lambda k: {**k, "masks": k["masks"][:, :4]}, r"^masks: expected the shape of anomaly_maps \(6, 8, 8\)"),
        (lambda k: {**k, "pred_scores": k["pred_scores"][:5]}, r"^pred_scores: expected shape \(6,\).*got \(5,\)"),
        (lambda k: {**k, "labels": torch.ones(6, 1)}, r"^labels: expected shape \(6,\)"),
        (lambda k: {**k, "labels": torch.full((6,), 2)}, r"^labels: values must be 0 or 1"),
        (lambda k: {**k, "masks": k["masks"] * 0.5}, r"^masks: values must be 0 or 1"),
        (lambda k: {**k, "indices": torch.arange(5)}, r"^indices: expected shape \(6,\)"),
        (lambda k: {**k, "indices": torch.arange(6.0)}, r"^indices: expected integers"),
        (lambda k: {**k, "categories": ["a"] * 6}, r"^categories: this metric was built without categories"),
    ],
)
def test_bad_input_errors_name_the_argument(change, match):
    with pytest.raises(ValueError, match=match) as err:
        AnomalyMetrics().update(**change(_kwargs()))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "categories,match",
    [
        (None, r"^categories: required"),
        (["a"] * 5, r"^categories: expected 6 names for 6 anomaly maps, got 5"),
        (["a"] * 5 + ["z"], r"^categories: unknown names \['z'\]"),
    ],
)
def test_bad_categories_are_named(categories, match):
    with pytest.raises(ValueError, match=match) as err:
        AnomalyMetrics(categories=CATS).update(**_kwargs(), categories=categories)
    assert "\n" not in str(err.value)


def test_map_size_change_and_partial_indices_are_errors():
    metric = AnomalyMetrics()
    metric.update(**_kwargs(size=8))
    with pytest.raises(ValueError, match=r"^anomaly_maps: all batches need one map size; got \(9, 9\) after \(8, 8\)"):
        metric.update(**_kwargs(size=9))
    metric.update(**_kwargs(), indices=torch.arange(6))
    with pytest.raises(ValueError, match=r"^indices: given for 6 of 12 images"):
        metric.compute()
    with pytest.raises(ValueError, match="must be unique"):
        AnomalyMetrics(categories=["a", "a"])


def test_inside_a_lightning_test_loop():
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    scores, labels, maps, masks, cats = dataset()
    ids = torch.tensor([CATS.index(c) for c in cats])
    data = TensorDataset(torch.from_numpy(maps), torch.from_numpy(scores), torch.from_numpy(masks), ids)

    class Tiny(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.test_metrics = AnomalyMetrics(categories=CATS)

        def test_step(self, batch, batch_idx):
            maps, scores, masks, ids = batch
            self.test_metrics.update(maps, scores, masks, categories=[CATS[i] for i in ids.tolist()])

        def on_test_epoch_end(self) -> None:
            self.log_dict(self.test_metrics.compute())
            self.test_metrics.reset()

    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.test(Tiny(), DataLoader(data, batch_size=5))
    logged = {k: float(v) for k, v in trainer.callback_metrics.items()}
    expected = suite_flat(scores, labels, maps, masks, cats)
    assert logged.keys() == expected.keys()
    for key, value in expected.items():  # Lightning logs float32
        assert math.isclose(logged[key], value, rel_tol=1e-6), key
