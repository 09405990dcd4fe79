"""Benchmark: bootstrap intervals of the image metrics and the paired tests, on MVTec AD-sized image scores.

    .venv/bin/python experiments/bench_bootstrap.py [--resamples 1000] [--pixel [--pixel-resamples 200] [--images N]]

1,725 test images in 15 categories (MVTec AD's test split: 467 normal, 1,258 defective), random scores with a
class shift. Times `image_intervals` (the per-run intervals results.json holds), `paired_bootstrap_p` and `delong_p`
(one leaderboard tie decision), median of 5 runs each. Goal (issue 27): image-level intervals in under 1 s.
`--pixel`: the metric benchmark's maps (`bench_metrics.make_input`, 1,725 maps of 256x256 split into 15
categories) scored once by the suite (`compute_category_metrics`), then 200 resamples of the four pixel metrics
(`pixel_bootstrap.pixel_resampled_metrics`); goal: at most 10x the one evaluation.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import time

import numpy as np

from anomaly_zoo.metrics.bootstrap import delong_p, image_intervals, paired_bootstrap_p


def mvtec_like(seed: int = 0):
    rng = np.random.default_rng(seed)
    normal = np.diff(np.linspace(0, 467, 16).round().astype(int))
    defective = np.diff(np.linspace(0, 1258, 16).round().astype(int))
    labels = np.concatenate([np.r_[np.zeros(n), np.ones(d)] for n, d in zip(normal, defective, strict=True)])
    cats = [f"c{i}" for i, (n, d) in enumerate(zip(normal, defective, strict=True)) for _ in range(n + d)]
    scores = rng.normal(size=labels.size) + 1.5 * labels
    return scores, labels.astype(int), cats


def timed(fn, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--pixel", action="store_true")
    parser.add_argument("--pixel-resamples", type=int, default=200)
    parser.add_argument("--images", type=int, default=1725)
    args = parser.parse_args()
    scores, labels, cats = mvtec_like()
    other = scores + np.random.default_rng(1).normal(scale=0.5, size=scores.size)
    b = args.resamples
    print(f"{platform.processor() or platform.machine()}, {datetime.date.today()}, {scores.size} images, {b} resamples")
    rows = {
        "image_intervals (3 metrics, 15 categories + mean)": lambda: image_intervals(scores, labels, cats, b),
        "paired_bootstrap_p (I-AUROC, two runs)": lambda: paired_bootstrap_p(scores, other, labels, cats, "I-AUROC", b),
        "delong_p (15 categories)": lambda: delong_p(scores, other, labels, cats),
    }
    for name, fn in rows.items():
        print(f"{name:52s} {timed(fn):.3f} s")
    if args.pixel:
        pixel(args.images, args.pixel_resamples)


def pixel(n_images: int, n_resamples: int) -> None:
    import resource
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_metrics import make_input

    from anomaly_zoo.metrics import compute_category_metrics
    from anomaly_zoo.metrics.bootstrap import stratified_resamples
    from anomaly_zoo.metrics.pixel_bootstrap import pixel_resampled_metrics

    scores_t, labels_t, maps_t, masks_t = make_input(n_images, 256, round(n_images * 1258 / 1725))
    scores, labels, maps, masks = (t.numpy() for t in (scores_t, labels_t, maps_t, masks_t))
    cats = [f"c{i % 15}" for i in range(n_images)]  # 15 categories, each with normal and defective images
    start = time.perf_counter()
    compute_category_metrics(scores, labels, maps, masks, cats)
    one = time.perf_counter() - start
    counts = stratified_resamples(labels, cats, n_resamples, seed=0)
    start = time.perf_counter()
    pixel_resampled_metrics(maps, masks, cats, counts)
    resampled = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(
        f"pixel: {n_images} maps of 256x256, 15 categories: one evaluation {one:.1f} s; {n_resamples} resamples of "
        f"the 4 pixel metrics {resampled:.1f} s = {resampled / one:.1f}x (goal <= 10x); peak RSS {peak:.1f} GiB"
    )


if __name__ == "__main__":
    main()
