"""Benchmark: bootstrap intervals of the image metrics and the paired tests, on MVTec AD-sized image scores.

    .venv/bin/python experiments/bench_bootstrap.py [--resamples 1000]

1,725 test images in 15 categories (MVTec AD's test split: 467 normal, 1,258 defective), random scores with a
class shift. Times `image_intervals` (the per-run intervals results.json holds), `paired_bootstrap_p` and `delong_p`
(one leaderboard tie decision), median of 5 runs each. Goal (issue 27): image-level intervals in under 1 s.
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


if __name__ == "__main__":
    main()
