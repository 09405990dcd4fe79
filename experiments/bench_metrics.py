"""Benchmark: the metric suite vs anomalib's AUROC, AUPR, F1Max and AUPRO on MVTec-sized input.

    .venv/bin/python experiments/bench_metrics.py [--images 1725] [--size 256] [--sklearn] [--adeval-strips 1000 ...]

Generates 1,725 anomaly maps of 256x256 (MVTec AD's test-set size, 1,258 defective) with blob-shaped defects,
times `compute_metrics` and anomalib's four metrics (image AUROC/AUPR/F1Max, pixel AUROC/AUPR/F1Max, AUPRO) in one
process, and prints both times, the ratio, the largest absolute difference between the values and the suite's
peak extra memory relative to the size of the maps. `--sklearn` also checks the pixel values against scikit-learn
(slow). Where ADEval (the binned accumulator ADer's benchmark uses; `make bench` installs it into .bench-deps/
with --no-deps) is installed, it is timed on the same maps too, once per `--adeval-strips` value, with its score
bounds set to the maps' true minimum and maximum (its most accurate setting). Results are recorded in the metrics
README.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import platform
import time
import tracemalloc

import numpy as np
import torch
import torch.nn.functional as F

from anomaly_zoo.metrics import METRIC_NAMES, compute_metrics


def make_input(n: int, size: int, n_defective: int, seed: int = 0, device: str | torch.device = "cpu"):
    """Smooth noisy maps; defective images get 1-3 elliptic blobs in the mask and a partial, shifted response.
    Built on `device` (the per-pixel work is the slow part on a CPU); the same draws on any device."""
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    low = torch.rand(n, 1, size // 8, size // 8, generator=gen).to(device)
    maps = F.interpolate(low, size=size, mode="bilinear")[:, 0]
    maps += 0.05 * torch.rand(n, size, size, generator=gen).to(device)
    masks = torch.zeros(n, size, size, dtype=torch.uint8, device=device)
    yy, xx = torch.meshgrid(torch.arange(size, device=device), torch.arange(size, device=device), indexing="ij")
    for i in range(n - n_defective, n):
        for _ in range(int(rng.integers(1, 4))):
            cy, cx = rng.uniform(0.1, 0.9, size=2) * size
            ry, rx = rng.uniform(0.01, 0.12, size=2) * size
            blob = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
            masks[i] |= blob.to(torch.uint8)
            shift = rng.normal(0, 0.3, size=2) * (ry, rx)
            response = ((yy - cy - shift[0]) / (1.3 * ry)) ** 2 + ((xx - cx - shift[1]) / (1.3 * rx)) ** 2
            maps[i] += float(rng.uniform(0.2, 1.0)) * torch.exp(-response)
    scores = F.avg_pool2d(maps[:, None], 8, 8)[:, 0].flatten(1).amax(1)
    labels = masks.flatten(1).amax(1).long()
    return scores, labels, maps, masks


def anomalib_metrics(scores, labels, maps, masks) -> dict[str, float]:
    from anomalib.metrics.aupr import _AUPR
    from anomalib.metrics.aupro import _AUPRO
    from anomalib.metrics.auroc import _AUROC
    from anomalib.metrics.f1_score import _F1Max

    out = {}
    for prefix, preds, target in (("I", scores, labels), ("P", maps, masks)):
        for name, metric in (("AUROC", _AUROC()), ("AP", _AUPR()), ("F1max", _F1Max())):
            metric.update(preds.flatten(), target.flatten().long())
            out[f"{prefix}-{name}"] = float(metric.compute())
    pro = _AUPRO(fpr_limit=0.3)
    pro.update(maps, masks)
    out["PRO"] = float(pro.compute())
    return out


def adeval_metrics(scores, labels, maps, masks, nstrips: int) -> dict[str, float]:
    """ADEval's `EvalAccumulator` fed every map, as ADer's evaluation does (binned: approximate by design)."""
    from adeval import EvalAccumulator

    if not hasattr(np, "trapz"):  # ADEval 1.1.0 calls np.trapz, which NumPy 2 renamed np.trapezoid
        np.trapz = np.trapezoid  # type: ignore[attr-defined]

    acc = EvalAccumulator(float(scores.min()), float(scores.max()), float(maps.min()), float(maps.max()),
                          nstrips=nstrips)  # fmt: skip
    acc.add_anomap_batch(maps, masks)
    acc.add_image(scores, labels)
    out = acc.summary()
    return {"I-AUROC": out["i_auroc"], "I-AP": out["i_aupr"], "P-AUROC": out["p_auroc"], "P-AP": out["p_aupr"],
            "PRO": out["p_aupro"]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1725)
    parser.add_argument("--defective", type=int, default=1258)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--sklearn", action="store_true", help="also check pixel metrics against scikit-learn")
    parser.add_argument("--skip-anomalib", action="store_true")
    parser.add_argument("--adeval-strips", type=int, nargs="*", default=[1000, 10000])
    parser.add_argument("--repeats", type=int, default=3, help="timings per contender, interleaved; median reported")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    print(
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"date {datetime.date.today()}"
    )
    scores, labels, maps, masks = make_input(args.images, args.size, args.defective)
    maps_np, masks_np, scores_np, labels_np = maps.numpy(), masks.numpy(), scores.numpy(), labels.numpy()
    map_bytes = maps_np.nbytes
    print(
        f"input: {args.images} maps of {args.size}x{args.size} ({map_bytes / 2**20:.0f} MiB float32), "
        f"{int(labels_np.sum())} defective, {masks_np.mean() * 100:.2f} % defect pixels"
    )

    from anomaly_zoo.metrics import pixel_ranks

    threads = pixel_ranks.pixel_workers()
    gc.collect()
    tracemalloc.start()
    ours = compute_metrics(scores_np, labels_np, maps_np, masks_np)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"anomaly_zoo suite: peak extra memory {peak / 2**20:.0f} MiB = {peak / map_bytes:.2f}x the maps")

    rows = {"anomaly_zoo": ours}
    try:
        import adeval  # noqa: F401
    except ImportError:
        print("ADEval is not installed (make bench puts it into .bench-deps/): its comparison is skipped")
        args.adeval_strips = []

    def one_thread() -> dict[str, float]:
        saved = pixel_ranks.pixel_workers
        pixel_ranks.pixel_workers = lambda: 1  # type: ignore[assignment]
        try:
            return compute_metrics(scores_np, labels_np, maps_np, masks_np)
        finally:
            pixel_ranks.pixel_workers = saved  # type: ignore[assignment]

    contenders = {f"anomaly_zoo suite ({threads} threads)": lambda: compute_metrics(scores_np, labels_np, maps_np,
                                                                                    masks_np),
                  "anomaly_zoo suite (1 thread)": one_thread}  # fmt: skip
    for nstrips in args.adeval_strips:  # single-threaded (numpy histograms per batch)
        contenders[f"ADEval {nstrips} strips"] = lambda n=nstrips: adeval_metrics(scores_np, labels_np, maps_np,
                                                                                  masks_np, n)  # fmt: skip
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(max(1, args.repeats)):  # interleaved: a load change on the machine hits every contender alike
        for name, fn in contenders.items():
            gc.collect()
            t0 = time.perf_counter()
            values = fn()
            times[name].append(time.perf_counter() - t0)
            if name.startswith("ADEval"):
                rows[name] = values
            else:
                assert values == ours, f"{name}: values differ from the first run"
    suite_time = float(np.median(next(iter(times.values()))))
    for name, ts in times.items():
        diff = max(abs(ours[k] - v) for k, v in rows.get(name, ours).items())
        print(f"{name}: median {np.median(ts):.2f} s (min {min(ts):.2f}, max {max(ts):.2f}, {len(ts)} runs) = "
              f"{np.median(ts) / suite_time:.2f}x the suite's time; max |difference| {diff:.1e}")  # fmt: skip
    if not args.skip_anomalib:
        t0 = time.perf_counter()
        rows["anomalib"] = anomalib_metrics(scores, labels, maps, masks)
        t_ref = time.perf_counter() - t0
        diff = max(abs(ours[k] - rows["anomalib"][k]) for k in METRIC_NAMES)
        print(f"anomalib AUROC+AUPR+F1Max+AUPRO: {t_ref:.2f} s")
        print(f"speed-up: {t_ref / suite_time:.1f}x; max |difference| of the 7 values: {diff:.2e}")
    if args.sklearn:
        from sklearn.metrics import average_precision_score, roc_auc_score

        y, s = masks_np.ravel(), maps_np.ravel()
        rows["sklearn"] = {
            "P-AUROC": roc_auc_score(y, s),
            "P-AP": average_precision_score(y, s),
            "I-AUROC": roc_auc_score(labels_np, scores_np),
            "I-AP": average_precision_score(labels_np, scores_np),
        }
    print("\n| source | " + " | ".join(METRIC_NAMES) + " |\n|---|" + "---:|" * len(METRIC_NAMES))
    for source, values in rows.items():
        print(f"| {source} | " + " | ".join(f"{values[k]:.5f}" if k in values else "-" for k in METRIC_NAMES) + " |")


if __name__ == "__main__":
    main()
