"""Exact vs the official evaluation protocols on maps the project's own methods produce (the synthetic set).

    .venv/bin/python experiments/protocols_synthetic.py [--out experiments/protocols_synthetic.md]

Runs PatchKNN (fitted, all six synthetic categories) and DIVAD (the tiny random Stable Diffusion of the tests, so its
maps are a random model's) once each through the runner, keeps the test split's maps and scores, and scores the same
arrays under every protocol (`compute_category_metrics(..., protocol=...)`). Prints the mean of each metric per
protocol and the difference to exact, in points. Takes a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

import anomaly_zoo.runner as runner
from anomaly_zoo.evaluation import EvaluationCollector
from anomaly_zoo.metrics import METRIC_NAMES, compute_category_metrics
from anomaly_zoo.metrics.protocols import PROTOCOLS

ROOT = Path(__file__).resolve().parents[1]
DIVAD_TINY = [
    "method=divad", "backbone=sd_tiny_random", "dataset.image_size=64", "method.resolution=64", "method.map_size=64",
    "method.num_steps=50", "method.start_steps=3",
    "method.feature_extractor._target_=anomaly_zoo.backbones.FeatureExtractor", "method.feature_extractor.name=lite0",
    "method.feature_extractor.timm_name=tf_efficientnet_lite0", "method.feature_extractor.weights=package",
    "method.feature_extractor.normalization=tf", "+method.feature_extractor.out_indices=[3]",
    "method.mask=dino_foreground",
]  # fmt: skip
RUNS = {"PatchKNN": ("train", ["method=patch_knn", "dataset.image_size=128"]), "DIVAD (tiny SD)": ("test", DIVAD_TINY)}


class Keeping(EvaluationCollector):
    """The evaluation callback, keeping its buffer and split after the run."""

    last: Keeping | None = None

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        super().on_test_epoch_end(trainer, pl_module)
        samples = trainer.datamodule.test_dataset.samples
        self.labels = np.array([s.label for s in samples])
        self.categories = [s.category for s in samples]
        Keeping.last = self


def scored(name: str, entry: str, overrides: list[str], data: Path, work: Path) -> dict[str, dict[str, float]]:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(entry, overrides=[f"dataset.root={data}", "trainer.enable_progress_bar=false",
                                        "eval.heatmaps_per_category=0", *overrides])  # fmt: skip
    with open_dict(cfg):
        cfg.paths.output_dir = str(work / name.split()[0])
    runner.EvaluationCollector = Keeping  # type: ignore[misc]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        runner.run(cfg, fit=entry == "train")
    kept = Keeping.last
    assert kept is not None and kept.buffer is not None
    buf = kept.buffer
    return {
        protocol: compute_category_metrics(buf.scores, kept.labels, buf.maps, buf.masks, kept.categories, protocol)[1]
        for protocol in PROTOCOLS
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    lines = ["| method | protocol | " + " | ".join(METRIC_NAMES) + " |", "|---|---|" + "---:|" * len(METRIC_NAMES)]
    with tempfile.TemporaryDirectory() as tmp:
        from anomaly_zoo.data.synthetic import ensure_synthetic_dataset

        data = ensure_synthetic_dataset(Path(tmp) / "synthetic", seed=0)
        for name, (entry, overrides) in RUNS.items():
            means = scored(name, entry, overrides, data, Path(tmp))
            for protocol, mean in means.items():
                cells = [f"{100 * mean[m]:.2f}" + ("" if protocol == "exact" else
                         f" ({100 * (mean[m] - means['exact'][m]):+.2f})") for m in METRIC_NAMES]  # fmt: skip
                lines.append(f"| {name} | {protocol} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
