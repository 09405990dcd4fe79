"""A tiny trainable test method: a 1x1-conv autoencoder trained on noisy images for a few epochs.

Small enough that a run of several epochs takes seconds, so tests can kill a real training process between
checkpoints; it draws noise from torch's global generator, so a resumed run matches the uninterrupted one only if the
framework restores the random-number state. `step_seconds` slows each step for tests that must kill it mid-run.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from anomaly_zoo.methods.base import AnomalyMethod, MethodOutput


class TinyAutoencoder(AnomalyMethod):
    def __init__(self, hidden: int = 4, lr: float = 0.05, max_epochs: int = 3, step_seconds: float = 0.0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Conv2d(3, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, 3, 1))

    @property
    def trainer_arguments(self) -> dict:
        return {"max_epochs": self.hparams.max_epochs, "num_sanity_val_steps": 0}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        time.sleep(self.hparams.step_seconds)
        noisy = batch["image"] + 0.05 * torch.randn_like(batch["image"])
        return (self.net(noisy) - batch["image"]).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)

    def predict_batch(self, images: torch.Tensor, categories: list[str], paths=None, views=None) -> MethodOutput:
        maps = (self.net(images) - images).pow(2).mean(dim=1)
        return {"anomaly_maps": maps, "pred_scores": maps.flatten(1).amax(dim=1)}
