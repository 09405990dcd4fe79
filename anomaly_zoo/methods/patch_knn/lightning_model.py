"""Lightning glue for PatchKNN: collect normal embeddings for one epoch, build the bank, score test images."""

from __future__ import annotations

from typing import Any, cast

import torch

from anomaly_zoo.backbones import FeatureExtractor
from anomaly_zoo.data.context import Batch
from anomaly_zoo.methods.base import AnomalyMethod, MethodOutput
from anomaly_zoo.methods.components import greedy_coreset
from anomaly_zoo.methods.patch_knn.torch_model import PatchKNNModel

SAMPLINGS = ("coreset", "random")


class PatchKNN(AnomalyMethod):
    """`method=patch_knn`: the framework's simple, real baseline (one pass over normal images, no gradients)."""

    def __init__(
        self,
        backbone: FeatureExtractor,
        bank_size: int = 2048,
        sampling: str = "coreset",
        projection_dim: int = 128,
        neighbourhood: int = 3,
        blur_sigma: float = 4.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if sampling not in SAMPLINGS:
            raise ValueError(f"method.sampling={sampling!r} is not one of {SAMPLINGS}")
        if bank_size < 1:
            raise ValueError(f"method.bank_size={bank_size} must be >= 1")
        self.save_hyperparameters(ignore=["backbone"])
        self.model = PatchKNNModel(backbone, neighbourhood, blur_sigma)
        self.automatic_optimization = False
        self._embeddings: list[torch.Tensor] = []

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        return {"max_epochs": 1, "num_sanity_val_steps": 0, "limit_val_batches": 0, "gradient_clip_val": None}

    def configure_optimizers(self) -> None:
        return None

    def training_step(self, batch: Batch, batch_idx: int) -> None:
        emb = self.model.embed(batch["image"])
        self._embeddings.append(emb.permute(0, 2, 3, 1).reshape(-1, emb.shape[1]).cpu())

    def on_train_epoch_end(self) -> None:
        local = torch.cat(self._embeddings)
        self._embeddings.clear()
        # Under DDP every rank saw a shard: gather so all ranks build the same bank.
        gathered = cast(torch.Tensor, self.all_gather(local.to(self.device)))  # a tensor in, a tensor out
        pool = gathered.reshape(-1, local.shape[1]) if gathered.ndim == 3 else gathered
        hp = self.hparams
        if hp.sampling == "coreset":
            idx = greedy_coreset(pool, hp.bank_size, hp.projection_dim, seed=hp.seed)
        else:
            gen = torch.Generator().manual_seed(hp.seed)
            idx = torch.randperm(pool.shape[0], generator=gen)[: hp.bank_size]
        self.model.set_memory_bank(pool[idx.to(pool.device)])

    def predict_batch(
        self,
        images: torch.Tensor,
        categories: list[str],
        paths: list[str] | None = None,
        views: dict[str, torch.Tensor] | None = None,
    ) -> MethodOutput:
        maps, scores = self.model(images)
        return {"anomaly_maps": maps, "pred_scores": scores}
