"""Benchmark: evaluation at Real-IAD scale, through the `EvaluationCollector` and the metric suite.

    .venv/bin/python experiments/bench_eval_scale.py [--scales 1 10 50] [--repeats 3] [--parts] [--categories 30]
        [--size 256]

Per scale k, k x 1,725 test images (MVTec AD's test split; 50x is Real-IAD's order of magnitude) of size x size
in `--categories` categories (Real-IAD has 30), fed batch by batch through the collector's test hooks exactly as
a test run does (a stand-in trainer and data module, one process), then scored per category by the suite. The maps
are the metric benchmark's 1,725 (`bench_metrics.make_input`) cycled, each copy shifted by its own random offset
so that no two images share values. Each scale runs in a fresh process, so that its peak RSS is its own; the
input generation is not timed. The collector scores each category when its last image arrives, so the feed time
includes the scoring of the categories; "end" is what the end of the test adds. Prints per scale: images, GiB of
maps, whether the buffer is memory-mapped, feed time, end time, their total, peak RSS, and the total relative to
n log n from the first scale's total; with `--parts`, also the time of the collector's parts (writing the maps, the
suite, the pixel sorts and ranks within it). With `--repeats R` each scale runs R times (each in its own process)
and the row is the run with the median total: the 1x total, which the n log n figure scales up, varied from 1.3 to
2.7 s between single runs on the same machine (most of it the first writes into the freshly allocated buffer).
Goal (issue 26): 50x scored with peak RSS under 8 GiB, time within n log n of the 1x figure.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

MVTEC_TEST_IMAGES = 1725


def _time_parts() -> dict[str, float]:
    """Wraps the collector's parts in timers (`--parts`): writing into the buffer, the suite per category, and within
    it the pixel sorts and ranks. Returns the totals, filled in as the parts run."""
    import functools

    from anomaly_zoo.evaluation import collector
    from anomaly_zoo.metrics import suite

    totals: dict[str, float] = {}
    for owner, name, label in ((collector.PredictionBuffer, "put", "writing the maps"),
                               (collector, "compute_metrics", "the suite"),
                               (suite, "rank_pixels", "of which pixel sorts and ranks")):  # fmt: skip
        inner = getattr(owner, name)
        totals[label] = 0.0  # printed in this order

        @functools.wraps(inner)
        def timed(*args, _inner=inner, _label=label, **kwargs):
            t0 = time.perf_counter()
            try:
                return _inner(*args, **kwargs)
            finally:
                totals[_label] = totals.get(_label, 0.0) + time.perf_counter() - t0

        setattr(owner, name, timed)
    return totals


def one_scale(scale: int, n_categories: int, size: int, batch: int = 32, parts: bool = False) -> dict:
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_metrics import make_input

    from anomaly_zoo.data.samples import Sample
    from anomaly_zoo.evaluation.collector import EvaluationCollector

    part_times = _time_parts() if parts else {}

    pool_scores, pool_labels, pool_maps, pool_masks = make_input(MVTEC_TEST_IMAGES, size, 1258)
    n = scale * MVTEC_TEST_IMAGES
    per_category = math.ceil(n / n_categories)
    source = np.random.default_rng(0).permutation(n) % MVTEC_TEST_IMAGES  # which pool map each image is
    labels = pool_labels.numpy()[source]
    # grouped by category as the datamodule orders a test split; within a category normals and defects mixed
    samples = [Sample(f"/bench/c{i // per_category}/{i}.png", None, int(labels[i]), f"c{i // per_category}")
               for i in range(n)]  # fmt: skip
    dataset = type("Split", (), {"size": (size, size), "samples": samples, "__len__": lambda self: n})()
    trainer = SimpleNamespace(datamodule=SimpleNamespace(test_dataset=dataset, root=None), is_global_zero=True,
                              world_size=1, logger=None, limit_test_batches=1.0)  # fmt: skip
    collector = EvaluationCollector(bootstrap_resamples=0)
    offsets = torch.from_numpy(np.random.default_rng(1).random(n, dtype=np.float32) * 1e-3)
    feed = 0.0
    collector.on_test_start(trainer, None)  # type: ignore[arg-type]
    for start in range(0, n, batch):
        index = torch.arange(start, min(n, start + batch))
        pick = torch.from_numpy(source[index.numpy()])
        maps = pool_maps[pick] + offsets[index, None, None]
        outputs = {"anomaly_maps": maps, "pred_scores": pool_scores[pick] + offsets[index]}
        batch_in = {"index": index, "mask": pool_masks[pick]}
        t0 = time.perf_counter()
        collector.on_test_batch_end(trainer, None, outputs, batch_in, start // batch)  # type: ignore[arg-type]
        feed += time.perf_counter() - t0
    del pool_maps, pool_masks
    memmapped = bool(collector.buffer is not None and collector.buffer.memmapped)
    t0 = time.perf_counter()
    collector.on_test_epoch_end(trainer, None)  # type: ignore[arg-type]
    score = time.perf_counter() - t0
    return {
        "scale": scale,
        "images": n,
        "maps_gib": n * size * size * 4 / 2**30,
        "memmapped": memmapped,
        "feed_s": feed,
        "score_s": score,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "mean_p_auroc": collector.mean["P-AUROC"],
        "parts_s": part_times,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--repeats", type=int, default=1, help="runs per scale; the median total is reported")
    parser.add_argument("--categories", type=int, default=30)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--parts", action="store_true", help="also time the collector's parts (timers add little)")
    parser.add_argument("--one-scale", type=int, help=argparse.SUPPRESS)  # the child process's job
    args = parser.parse_args()
    if args.one_scale:
        print(json.dumps(one_scale(args.one_scale, args.categories, args.size, parts=args.parts)))
        return
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, {datetime.date.today()}")
    first = None
    for scale in args.scales:
        runs = []
        for _ in range(max(1, args.repeats)):
            out = subprocess.run([sys.executable, __file__, "--one-scale", str(scale), "--categories",
                                  str(args.categories), "--size", str(args.size), *(["--parts"] * args.parts)],
                                 capture_output=True, text=True, check=True)  # fmt: skip
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        runs.sort(key=lambda r: r["feed_s"] + r["score_s"])
        row = runs[len(runs) // 2]
        spread = (
            "" if len(runs) == 1 else " (runs: " + ", ".join(f"{r['feed_s'] + r['score_s']:.1f}" for r in runs) + " s)"
        )
        pixels = row["images"] * args.size**2
        total = row["feed_s"] + row["score_s"]
        first = first or (total, pixels)
        nlogn = first[0] * pixels * math.log(pixels) / (first[1] * math.log(first[1]))
        print(
            f"{scale:3d}x: {row['images']:6d} images, {row['maps_gib']:5.1f} GiB of maps"
            f"{' (memory-mapped)' if row['memmapped'] else ''}: feed and per-category scoring {row['feed_s']:6.1f} s,"
            f" end {row['score_s']:6.1f} s, total {total:6.1f} s{spread} = {total / nlogn:.2f}x n log n from the first"
            f" scale ({nlogn:6.1f} s), peak RSS {row['peak_rss_gib']:.2f} GiB, mean P-AUROC {row['mean_p_auroc']:.4f}",
            flush=True,
        )
        if row["parts_s"]:
            print("      parts: " + ", ".join(f"{k} {v:.1f} s" for k, v in row["parts_s"].items()), flush=True)


if __name__ == "__main__":
    main()
