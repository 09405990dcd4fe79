"""Benchmark: PatchCore's coreset selection, anomalib's k-center greedy vs the adapter's `method.coreset=fast`.

    .venv/bin/python experiments/bench_coreset.py [--image-size 256] [--categories brick,logo] [--ratio 0.1]

Runs `python -m anomaly_zoo.train method=patchcore` twice on the embedded synthetic set (unified: one model; two
categories by default, 61k training patches at 256 px; `--categories all` for all six, 184k patches), once with
anomalib's coreset selection and once with the framework's, and prints the time of the memory-bank fitting step
(coreset selection), the whole run and the test metrics of both, side by side.
Both select 10 % of the training patches by k-center greedy; anomalib projects with a sparse random projection and
recomputes a full norm per pick, the framework projects to 128 dimensions and updates distances with one
matrix-vector product per pick. Results of a run are recorded in the README.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(coreset: str, args: argparse.Namespace, out: Path) -> dict:
    overrides = [
        "method=patchcore",
        f"method.coreset={coreset}",
        f"method.model.coreset_sampling_ratio={args.ratio}",
        f"dataset.image_size={args.image_size}",
        "eval.heatmaps_per_category=0",
        "trainer.enable_progress_bar=false",
        "logger=csv",
        f"hydra.run.dir={out}",
    ]
    if args.categories != "all":
        overrides.append(f"dataset.categories=[{args.categories}]")
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-m", "anomaly_zoo.train", *overrides], cwd=ROOT, env=env, check=True)
    return json.loads((out / "results.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--categories", default="brick,logo", help="comma-separated subset, or `all`")
    parser.add_argument("--ratio", type=float, default=0.1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = {c: run(c, args, Path(tmp) / c) for c in ("anomalib", "fast")}
    print(f"\nPatchCore coreset selection, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{datetime.date.today()}, image size {args.image_size}, ratio {args.ratio}")  # fmt: skip
    print("| coreset | fit (coreset) s | run s | I-AUROC | P-AUROC | P-AP | PRO |\n|---|---:|---:|---:|---:|---:|---:|")
    for name, res in results.items():
        m = res["mean"]
        print(f"| {name} | {res['epoch_end_fit_s']:.1f} | {res['runtime_s']:.1f} | {100 * m['I-AUROC']:.1f} | "
              f"{100 * m['P-AUROC']:.1f} | {100 * m['P-AP']:.1f} | {100 * m['PRO']:.1f} |")  # fmt: skip
    a, f = results["anomalib"], results["fast"]
    print(
        f"speed-up of the coreset step: {a['epoch_end_fit_s'] / max(f['epoch_end_fit_s'], 1e-9):.1f}x; "
        f"I-AUROC difference (fast - anomalib): {100 * (f['mean']['I-AUROC'] - a['mean']['I-AUROC']):+.2f}"
    )


if __name__ == "__main__":
    main()
