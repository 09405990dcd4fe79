"""Train OneNIP for a few steps with 2-process DDP (gloo, CPU) and save each rank's final weights.

python -m tests.helpers.ddp_train <synthetic_root> <out_dir>
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from anomaly_zoo.backbones import FeatureExtractor
from anomaly_zoo.data import AnomalyDataModule
from anomaly_zoo.methods.onenip import OneNIP


class SaveRankWeights(Callback):
    def __init__(self, out: Path) -> None:
        self.out = out

    def on_train_end(self, trainer, pl_module) -> None:
        # Parameters, and the buffers every rank must agree on; BatchNorm running statistics are rank-local under
        # DDP unless trainer.sync_batchnorm=true (as in the official code), so they are left out.
        state = {k: v.detach().cpu() for k, v in pl_module.named_parameters()}
        state.update(
            {
                k: v.detach().cpu()
                for k, v in pl_module.named_buffers()
                if "running_" not in k and "num_batches" not in k
            }
        )
        torch.save(state, self.out / f"rank{trainer.global_rank}.pt")


def main(root: str, out: str) -> None:
    pl.seed_everything(0)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    dm = AnomalyDataModule("synthetic", root, categories=["logo", "coin"], image_size=64, train_batch_size=4,
                           num_workers=0)  # fmt: skip
    backbone = FeatureExtractor("lite0", "tf_efficientnet_lite0", [0, 1, 2, 3], weights="package", normalization="tf")
    method = OneNIP(backbone, image_size=64, hidden=32, heads=2, ffn=64, encoder_layers=1, decoder_layers=1,
                    refiner_hidden=16, max_epochs=1)  # fmt: skip
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=3, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, callbacks=[SaveRankWeights(out_dir)],
                         gradient_clip_val=0.1)  # fmt: skip
    dm.setup("fit")
    method.setup_fit(dm.training_data())  # the runner's one door for data, as a user's own script would call it
    trainer.fit(method, datamodule=dm)


if __name__ == "__main__":
    main(*sys.argv[1:3])
