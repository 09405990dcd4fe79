"""Cost of the per-epoch `last.ckpt` on the OneNIP demo (experiment=onenip_demo): seconds per checkpoint and size.

    python experiments/bench_checkpoint.py [repeats]

Fits the demo model for one short epoch (weights, optimizer state, prompt pool: what every epoch's checkpoint
holds), then times `trainer.save_checkpoint` through the framework's atomic writer (write, fsync, rename) into a
temporary folder.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import hydra
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from anomaly_zoo.runner import build_trainer, instantiate_method

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def main(repeats: int = 5) -> None:
    with tempfile.TemporaryDirectory() as tmp, initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("train", overrides=["experiment=onenip_demo", "~logger", "trainer.limit_train_batches=2",
                                          "method.max_epochs=1", "trainer.enable_progress_bar=false",
                                          "dataset.num_workers=0"])  # fmt: skip
        with open_dict(cfg):
            cfg.paths.output_dir = tmp
        datamodule = hydra.utils.instantiate(cfg.dataset)
        method = instantiate_method(cfg)
        trainer = build_trainer(cfg, method, Path(tmp), [])
        datamodule.prepare_data()
        datamodule.setup("fit")
        method.setup_fit(datamodule.training_data())  # what the runner does before fitting
        trainer.fit(method, datamodule=datamodule)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            trainer.save_checkpoint(Path(tmp) / "last.ckpt")
            times.append(time.perf_counter() - start)
        size = (Path(tmp) / "last.ckpt").stat().st_size / 2**20
    print(f"onenip_demo checkpoint: {size:.1f} MiB, {statistics.median(times):.3f} s median over {repeats} saves "
          f"(min {min(times):.3f}, max {max(times):.3f})")  # fmt: skip


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
