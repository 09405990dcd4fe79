"""OneNIP / UniAD training and inference glue (losses, prompts, optimisation, checkpoints' extra state)."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F

from anomaly_zoo.backbones import FeatureExtractor
from anomaly_zoo.data.context import Batch, TrainingData
from anomaly_zoo.methods.base import AnomalyMethod, MethodOutput
from anomaly_zoo.methods.onenip.synthesis import PseudoAnomalyGenerator
from anomaly_zoo.methods.onenip.torch_model import (
    OneNIPModel,
    ReconstructionTransformer,
    Refiner,
    StrideSixteenNeck,
    add_feature_jitter,
    choose_prompts,
    convert_row_col_layout,
    dice_loss,
    guided_reconstruction,
    pooled_max_score,
    reconstruction_error_map,
)

#: Checkpoint marker of the official [column | row] position-embedding layout; checkpoints without it are converted.
POSITION_LAYOUT = "col_row"
#: cosine: the most similar pool image (paper); oracle: the most similar of the ground-truth class; random: a random
#: pool image of the ground-truth class per test image (the official test loader's random.choice; seeded here).
PROMPT_SELECTIONS = ("cosine", "oracle", "random")
#: official: one MSE over both streams ((MSE_rec + MSE_res) / 2) + w * Dice without the factor 2, as the released
#: code (tools/train_val.py + utils/criterion_helper.py); paper: Eq. 8, MSE_rec + MSE_res + w * Dice of Eq. 7.
LOSSES = ("official", "paper")
SCORE_SCALINGS = ("calibrated", "transductive", "none")


def _stable_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


class OneNIP(AnomalyMethod):
    """`method=onenip` (and `method=uniad`: decoder=query, no restoration, no refiner).

    Training: each normal query image is paired with a random normal image of its class (the prompt); a
    pseudo-anomalous copy of the query is restored towards the clean features (restoration stream); the refiner
    learns to segment |F - F̂| against [zeros; pseudo masks]. Loss (method.loss=official, the released code) =
    (MSE_rec + MSE_res) / 2 + dice_weight * Dice (no factor 2); method.loss=paper: MSE_rec + MSE_res + dice_weight *
    Dice (Eq. 7 with its factor 2).
    Inference: S = (1 - alpha) S_rec + alpha * c * M̂, image score = max of an average-pooled S.
    """

    architecture_keys = (
        "image_size", "feature_stages", "decoder", "decoder_residual", "hidden", "heads", "ffn", "encoder_layers",
        "decoder_layers", "neighbour_window", "refiner", "refiner_hidden",
    )  # fmt: skip

    # Buffers (register_buffer in __init__), declared for the type checker.
    pool_features: torch.Tensor
    pool_category: torch.Tensor
    rec_scale: torch.Tensor
    feature_statistics_fitted: torch.Tensor

    def __init__(
        self,
        backbone: FeatureExtractor,
        image_size: int,
        feature_stages: Sequence[int] | None = (0, 1, 2, 3),
        decoder: str = "dynamic",
        decoder_residual: str = "fixed",
        hidden: int = 256,
        heads: int = 8,
        ffn: int = 1024,
        encoder_layers: int = 4,
        decoder_layers: int = 4,
        dropout: float = 0.1,
        neighbour_window: Sequence[int] | None = None,
        jitter_scale: float = 20.0,
        jitter_probability: float = 1.0,
        restoration: bool = True,
        refiner: bool = True,
        refiner_hidden: int = 128,
        dice_weight: float = 0.5,
        loss: str = "official",
        dtd_dir: str | None = None,
        alpha: float = 0.5,
        score_scaling: str = "calibrated",
        image_score_pool: int = 16,
        prompt_selection: str = "cosine",
        prompt_pool_size: int = 1,
        lr: float = 1e-4,
        weight_decay: float = 1e-4,
        lr_step_fraction: float = 0.8,
        lr_gamma: float = 0.1,
        max_epochs: int = 1000,
        grad_clip: float = 0.1,
        cache_features: bool = False,
        standardize_features: bool = False,
        channels_last: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if image_size % 16:
            raise ValueError(f"OneNIP needs dataset.image_size divisible by 16, got {image_size}")
        if prompt_selection not in PROMPT_SELECTIONS:
            raise ValueError(f"method.prompt_selection={prompt_selection!r} is not one of {PROMPT_SELECTIONS}")
        if score_scaling not in SCORE_SCALINGS:
            raise ValueError(f"method.score_scaling={score_scaling!r} is not one of {SCORE_SCALINGS}")
        if loss not in LOSSES:
            raise ValueError(f"method.loss={loss!r} is not one of {LOSSES}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"method.alpha={alpha} must be in [0, 1]")
        self.save_hyperparameters(ignore=["backbone"])
        if feature_stages is not None:
            backbone = backbone.with_stages(feature_stages)
        self.neck = StrideSixteenNeck(backbone)
        grid = (image_size // 16, image_size // 16)
        self.transformer = ReconstructionTransformer(
            self.neck.channels, grid, decoder, hidden, heads, ffn, encoder_layers, decoder_layers, dropout,
            neighbour_window, decoder_residual,
        )  # fmt: skip
        self.refiner = Refiner(self.neck.channels, refiner_hidden) if refiner else None
        self.synthesis = PseudoAnomalyGenerator(dtd_dir) if (restoration or refiner) else None
        # NHWC convolutions for bf16 tensor cores (no gain measured on CPU); the transformer is unaffected.
        if channels_last:
            self.neck.use_memory_format(torch.channels_last)
            if self.refiner is not None:
                self.refiner.use_memory_format(torch.channels_last)
        # Fitted state, saved in checkpoints: the prompt pool and the reconstruction-error scale.
        self.register_buffer("pool_features", torch.empty(0, self.neck.channels, *grid))
        self.register_buffer("pool_category", torch.empty(0, dtype=torch.long))
        self.register_buffer("rec_scale", torch.tensor(1.0))
        self.register_buffer("feature_statistics_fitted", torch.tensor(False))
        self.pool_categories: list[str] = []
        self._rng = torch.Generator().manual_seed(seed)  # prompts and pseudo-anomalies; checkpointed
        self._train_prompts: dict[str, list[int]] = {}
        self._feature_cache: dict[int, torch.Tensor] = {}
        self._test_scale: float | None = None
        self._test_rng = torch.Generator().manual_seed(seed)  # prompt_selection=random
        #: set when the weights came from an official checkpoint: {"kind", "unused_keys", "built_from_training_images"}
        self.official_import: dict[str, Any] | None = None

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        return {"max_epochs": self.hparams.max_epochs, "gradient_clip_val": self.hparams.grad_clip}

    # ------------------------------------------------------------------ features and forward
    def torch_model(self) -> OneNIPModel:
        """The inference network as one pure `nn.Module` (`forward(images) -> maps, scores`), sharing this module's
        weights and prompt pool, with the score scale of the current phase (calibrated, or transductive in test)."""
        return OneNIPModel(self.neck, self.transformer, self.refiner, self.pool_features, self.hparams.alpha,
                           self.score_scale(), self.hparams.image_score_pool)  # fmt: skip

    def score_scale(self) -> float:
        """c in S = (1 - alpha) S_rec + alpha * c * M̂, as method.score_scaling says. A transductive c exists only
        once computed over the images to score (never a silent 1.0)."""
        scaling = self.hparams.score_scaling
        if self.refiner is None or scaling == "none":
            return 1.0
        if scaling == "calibrated":
            return float(self.rec_scale)
        if self._test_scale is None:
            raise RuntimeError(
                "method.score_scaling=transductive: the score scale c is the mid-range of S_rec over the whole set of "
                "images scored together, and none has been computed. Call method.set_transductive_scale(batches) "
                "with those images first (anomaly_zoo.test does it over the test split, anomaly_zoo.predict over "
                "its input folder), or set method.score_scaling=calibrated (a scale from training images; "
                "anomaly_zoo.convert computes it for an official checkpoint)"
            )
        return self._test_scale

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.neck(images)

    def refine(self, residual: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Refiner logits (N, H, W) from |F - F_hat| (N, C, h, w)."""
        assert self.refiner is not None
        return self.refiner(residual, size)

    def _dataset_features(self, dataset, indices: Sequence[int]) -> torch.Tensor:
        """Features of dataset images by index (cached when method.cache_features: the backbone is frozen)."""
        missing = [i for i in dict.fromkeys(indices) if i not in self._feature_cache]
        if missing:
            images = torch.stack([dataset[i]["image"] for i in missing]).to(self.device)
            feats = self.features(images)
            if not self.hparams.cache_features:
                lookup = dict(zip(missing, feats, strict=True))
                return torch.stack([lookup[i] for i in indices])
            self._feature_cache.update(zip(missing, feats, strict=True))
        return torch.stack([self._feature_cache[i] for i in indices])

    def _features_in_chunks(self, dataset, indices: Sequence[int], chunk: int = 16) -> torch.Tensor:
        """`_dataset_features` over many images, `chunk` at a time (bounded backbone batch)."""
        starts = range(0, len(indices), chunk)
        return torch.cat([self._dataset_features(dataset, indices[i : i + chunk]) for i in starts])

    def reconstruct(self, feats: torch.Tensor, prompt_feats: torch.Tensor | None, jitter: bool) -> torch.Tensor:
        """F̂ of features guided by prompt features (torch_model.guided_reconstruction); `jitter` in training."""
        hp = self.hparams
        noise = (lambda x: add_feature_jitter(x, hp.jitter_scale, hp.jitter_probability)) if jitter else None
        return guided_reconstruction(self.transformer, feats, prompt_feats, noise)

    def score_maps(self, feats: torch.Tensor, rec: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Fused anomaly maps (N, H, W) at image resolution."""
        return self.torch_model().score_maps(feats, rec, size)

    def image_scores(self, maps: torch.Tensor) -> torch.Tensor:
        return pooled_max_score(maps, self.hparams.image_score_pool)

    # ------------------------------------------------------------------ training
    def on_fit_start(self) -> None:
        data = self.require_training_data()
        self._train_prompts = data.distinct
        # The pool only needs the frozen backbone: build it now so every checkpoint carries it.
        self._build_prompt_pool(data)
        if self.hparams.standardize_features and not bool(self.feature_statistics_fitted):
            self._fit_feature_statistics(data.dataset)  # once: a resumed run keeps its checkpoint's statistics

    @torch.no_grad()
    def _fit_feature_statistics(self, dataset, max_images: int = 256) -> None:
        """Per-channel mean/std of the frozen features over (up to `max_images`, seeded) distinct training images.

        Same seed and data on every rank, so DDP ranks agree without communication.
        """
        indices = [i for pool in self._train_prompts.values() for i in pool]
        if len(indices) > max_images:
            indices = random.Random(self.hparams.seed).sample(indices, max_images)
        feats = self._features_in_chunks(dataset, indices).double()
        mean, std = feats.mean(dim=(0, 2, 3)), feats.std(dim=(0, 2, 3), correction=0)
        self.transformer.set_feature_statistics(mean.float(), std.float())
        self.feature_statistics_fitted.fill_(True)

    def _losses(
        self, images: torch.Tensor, feats: torch.Tensor, prompt_feats: torch.Tensor | None, rng: torch.Generator,
        jitter: bool,
    ) -> dict[str, torch.Tensor]:  # fmt: skip
        """Unweighted loss terms: reconstruction of the clean stream, restoration of the pseudo-anomalous one, the
        refiner's Dice (`total_loss` combines them)."""
        streams, masks = [feats], [torch.zeros_like(images[:, 0])]
        if self.synthesis is not None:
            synthetic, synth_masks = self.synthesis(images, rng)
            streams.append(self.features(synthetic))
            masks.append(synth_masks)
        inputs = torch.cat(streams)
        rec = self.reconstruct(inputs, prompt_feats, jitter=jitter)
        n = images.shape[0]
        losses = {"rec": F.mse_loss(rec[:n], feats)}
        if self.hparams.restoration and len(streams) > 1:
            losses["res"] = F.mse_loss(rec[n:], feats)  # target: the clean features
        if self.refiner is not None:
            logits = self.refine((rec - inputs).abs(), (images.shape[-2], images.shape[-1]))
            losses["dice"] = dice_loss(logits, torch.cat(masks), doubled=self.hparams.loss == "paper")
        return losses

    def total_loss(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        """method.loss=official: the MSE of both streams concatenated (equal sizes: the mean of the two terms);
        paper: their sum (Eq. 8). Plus dice_weight * Dice."""
        mse = [losses[k] for k in ("rec", "res") if k in losses]
        total = sum(mse) / len(mse) if self.hparams.loss == "official" else sum(mse)
        if "dice" in losses:
            total = total + self.hparams.dice_weight * losses["dice"]
        return cast(torch.Tensor, total)  # "rec" is always there: a sum of tensors, never the int 0

    def _training_prompts(self, categories: Sequence[str]) -> torch.Tensor | None:
        if not self.transformer.uses_prompt:
            return None
        picks = []
        for category in categories:
            pool = self._train_prompts[category]
            picks.append(pool[int(torch.randint(len(pool), (1,), generator=self._rng))])
        return self._dataset_features(self.require_training_data().dataset, picks)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        if self.hparams.cache_features:
            feats = self._dataset_features(self.require_training_data().dataset, batch["index"].tolist())
        else:
            feats = self.features(batch["image"])
        prompts = self._training_prompts(batch["category"])
        losses = self._losses(batch["image"], feats, prompts, self._rng, jitter=True)
        loss = self.total_loss(losses)
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, batch_size=batch["image"].shape[0])
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["image"].shape[0])
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        # Held-out normal images with pseudo-anomalies from a fixed generator: comparable across epochs.
        rng = torch.Generator().manual_seed(self.hparams.seed * 100_003 + batch_idx)
        prompts = None
        if self.transformer.uses_prompt:
            pools = [self._train_prompts[c] for c in batch["category"]]
            picks = [pool[_stable_hash(p) % len(pool)] for pool, p in zip(pools, batch["path"], strict=True)]
            prompts = self._dataset_features(self.require_training_data().dataset, picks)
        losses = self._losses(batch["image"], self.features(batch["image"]), prompts, rng, jitter=False)
        self.log("val/loss", self.total_loss(losses), prog_bar=True, sync_dist=True, batch_size=len(batch["path"]))

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        step = max(1, int(self.hparams.lr_step_fraction * self.trainer.max_epochs))
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=step, gamma=self.hparams.lr_gamma)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    def on_train_epoch_end(self) -> None:
        # Before ModelCheckpoint saves (it runs after the module's hook): every checkpoint has a current scale.
        self._calibrate_scale(self.require_training_data().dataset)

    def on_train_end(self) -> None:
        self._feature_cache.clear()

    @torch.no_grad()
    def _build_prompt_pool(self, data: TrainingData) -> None:
        """`prompt_pool_size` random distinct normal training images per class (the paper: one), seeded."""
        rng = random.Random(self.hparams.seed)
        dataset, by_category = data.dataset, data.distinct
        picks, owners = [], []
        for k, category in enumerate(by_category):
            candidates = by_category[category]
            chosen = rng.sample(candidates, min(self.hparams.prompt_pool_size, len(candidates)))
            picks += chosen
            owners += [k] * len(chosen)
        was_training = self.training
        self.eval()
        self.pool_features = self._features_in_chunks(dataset, picks)
        self.pool_category = torch.tensor(owners, device=self.device)
        self.pool_categories = list(by_category)
        self.train(was_training)

    @torch.no_grad()
    def _calibrate_scale(self, dataset) -> None:
        """c = mid-range of S_rec over training images and their pseudo-anomalous copies (eval mode).

        The official code uses the mid-range over the whole test set, which reads test data; this uses only
        training images (score_scaling=transductive reproduces the official behaviour, flagged as such). The range is
        read on the token grid: bilinear upsampling to the image only interpolates between grid values, so the
        upsampled maps the scale is applied to have (up to interpolation) the same minimum and maximum.
        """
        if self.refiner is None or self.hparams.score_scaling != "calibrated":
            return
        assert self.synthesis is not None  # built whenever there is a refiner
        was_training = self.training
        self.eval()
        rng = torch.Generator().manual_seed(self.hparams.seed + 7)
        order = torch.randperm(len(dataset), generator=rng)[:16].tolist()
        lo, hi = float("inf"), float("-inf")
        for start in range(0, len(order), 8):
            items = [dataset[i] for i in order[start : start + 8]]
            images = torch.stack([it["image"] for it in items]).to(self.device)
            categories = [it["category"] for it in items]
            for batch_images in (images, self.synthesis(images, rng)[0]):
                feats = self.features(batch_images)
                prompts = self._pool_prompts(feats, categories, "oracle") if self.transformer.uses_prompt else None
                rec_map = (self.reconstruct(feats, prompts, jitter=False) - feats).norm(dim=1)
                lo, hi = min(lo, float(rec_map.min())), max(hi, float(rec_map.max()))
        stats = torch.tensor([-lo, hi], device=self.device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():  # DDP: every rank's range
            stats = cast(torch.Tensor, self.all_gather(stats))  # a tensor in, a tensor out
        stats = stats.reshape(-1, 2).amax(0)
        self.rec_scale = torch.tensor((float(stats[1]) - float(stats[0])) / 2, device=self.device)
        self.train(was_training)

    # ------------------------------------------------------------------ inference
    def _pool_prompts(self, feats: torch.Tensor, categories: Sequence[str], selection: str) -> torch.Tensor:
        """Prompt features per image: `oracle` restricts to the ground-truth class, `cosine` searches the pool."""
        return self.pool_features[self._pool_choice(feats, categories, selection)]

    def _pool_choice(self, feats: torch.Tensor, categories: Sequence[str], selection: str) -> torch.Tensor:
        return choose_prompts(feats, self.pool_features, *self._selection(categories, selection))

    def _selection(
        self, categories: Sequence[str], selection: str
    ) -> tuple[torch.Tensor | None, torch.Generator | None]:
        """(allowed pool entries per image, generator) for choose_prompts: `oracle` restricts to the image's class,
        `random` draws uniformly among them, `cosine` searches the whole pool."""
        if self.pool_features.numel() == 0:
            raise RuntimeError(
                "OneNIP has no prompt pool: fit it, load a checkpoint of this framework, or turn an official "
                "checkpoint into one with python -m anomaly_zoo.convert (it builds the pool from training images)"
            )
        allowed = None
        if selection in ("oracle", "random"):
            allowed = torch.stack([self.pool_category == self._category_id(c) for c in categories])
        return allowed, self._test_rng if selection == "random" else None

    def _category_id(self, category: str) -> int:
        if category not in self.pool_categories:
            raise ValueError(
                f"prompt_selection={self.hparams.prompt_selection}: category {category!r} has no prompt "
                f"(trained on {self.pool_categories})"
            )
        return self.pool_categories.index(category)

    def rename_categories(self, renames: dict[str, str]) -> None:
        """The prompt pool's classes under the test's names (oracle and random prompts choose by class name)."""
        self.pool_categories = [renames.get(c, c) for c in self.pool_categories]

    @torch.no_grad()
    def complete_from_training_data(self, data: TrainingData) -> None:
        """What an official checkpoint lacks, built from the training images as training would have: the prompt
        pool, and the score scale (score_scaling=calibrated). Recorded in result_metadata."""
        self._train_prompts = data.distinct
        self._build_prompt_pool(data)
        built = ["prompt_pool"]
        if self.refiner is not None and self.hparams.score_scaling == "calibrated":
            self._calibrate_scale(data.dataset)
            built.append("rec_scale")
        self.official_import = {**(self.official_import or {}), "built_from_training_images": built}

    def on_test_start(self) -> None:
        if self.transformer.uses_prompt and self.pool_features.numel() == 0:  # e.g. an official checkpoint
            self.complete_from_training_data(self.require_training_data())
        elif self.transformer.uses_prompt and len(self.pool_features) < self.hparams.prompt_pool_size * len(
            self.pool_categories
        ):  # a larger pool asked for at test time (e.g. experiment=onenip_official_eval): same seed, more images
            data = self.require_training_data()
            if len(self.pool_features) < sum(map(len, data.distinct.values())):
                self._build_prompt_pool(data)
        self._test_scale = None
        self._test_rng.manual_seed(self.hparams.seed)  # the same random prompts on every test run
        if self.refiner is not None and self.hparams.score_scaling == "transductive":
            if self.test_context is None:
                raise RuntimeError(
                    "method.score_scaling=transductive reads the whole test split: call method.setup_test("
                    "datamodule.test_context()) before trainer.test (anomaly_zoo's runner does)"
                )
            self.set_transductive_scale(self.test_context.test_batches())

    @torch.no_grad()
    def set_transductive_scale(self, batches: Iterable[Batch]) -> float:
        """The official code's constant, c = mid-range of S_rec over ALL the given images (the official test: its
        whole test set), with the prompts scoring would choose; used by score_scaling=transductive. Returns c."""
        lo, hi = float("inf"), float("-inf")
        for batch in batches:
            images = batch["image"].to(self.device)
            feats = self.features(images)
            rec = self.reconstruct(feats, self._prompts_for_test(feats, batch["category"]), jitter=False)
            rec_map = reconstruction_error_map(feats, rec, (images.shape[-2], images.shape[-1]))
            lo, hi = min(lo, float(rec_map.min())), max(hi, float(rec_map.max()))
        if lo > hi:
            raise ValueError("method.score_scaling=transductive: no images to compute the score scale over")
        self._test_scale = (lo + hi) / 2
        return self._test_scale

    def prepare_prediction(self, batches: Callable[[], Iterable[Batch]]) -> str | None:
        if self.refiner is None or self.hparams.score_scaling != "transductive":
            return None
        n = 0

        def counted() -> Iterator[Batch]:
            nonlocal n
            for batch in batches():
                n += len(batch["image"])
                yield batch

        c = self.set_transductive_scale(counted())
        return (
            f"method.score_scaling=transductive: score scale c = {c:.6g}, the mid-range of S_rec over the {n} images "
            "scored here, as the official test computes it over its test set; every score depends on which images "
            "are scored together (method.score_scaling=calibrated: a scale from training images, fixed per model)"
        )

    def _prompts_for_test(self, feats: torch.Tensor, categories: Sequence[str]) -> torch.Tensor | None:
        """The prompts scoring uses: the configured selection, or by similarity where the class is unknown."""
        if not self.transformer.uses_prompt:
            return None
        return self._pool_prompts(feats, categories, self._selection_for(categories))

    def _selection_for(self, categories: Sequence[str]) -> str:
        return self.hparams.prompt_selection if all(categories) else "cosine"  # unknown classes (predict)

    @torch.no_grad()
    def predict_batch(
        self,
        images: torch.Tensor,
        categories: list[str],
        paths: list[str] | None = None,
        views: dict[str, torch.Tensor] | None = None,
    ) -> MethodOutput:
        allowed, generator = None, None
        if self.transformer.uses_prompt:
            # Unknown classes (e.g. predict on a folder) leave the choice to the features.
            allowed, generator = self._selection(categories, self._selection_for(categories))
        maps, scores, chosen = self.torch_model().predict(images, allowed, generator)
        out: MethodOutput = {"anomaly_maps": maps, "pred_scores": scores}
        if chosen is not None:
            out["categories"] = [self.pool_categories[int(self.pool_category[c])] for c in chosen]
        return out

    def result_metadata(self) -> dict[str, Any]:
        meta = {"decoder": self.hparams.decoder, "score_scaling": self.hparams.score_scaling, "loss": self.hparams.loss}
        if self.official_import:
            meta["official_checkpoint"] = self.official_import
        if self.transformer.uses_prompt:
            meta["prompt_selection"] = self.hparams.prompt_selection
        return meta

    # ------------------------------------------------------------------ checkpoint extras (weights_only-safe)
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["pool_categories"] = list(self.pool_categories)
        checkpoint["position_layout"] = POSITION_LAYOUT
        if self.official_import:
            checkpoint["official_import"] = self.official_import
        # NumPy's stubs type the call without arguments as the dict form; legacy=True (the default) returns the tuple.
        np_state = cast(tuple, np.random.get_state())
        checkpoint["rng_state"] = {
            "method": self._rng.get_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
            "python": _python_state_to_lists(random.getstate()),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.official_import = checkpoint.get("official_import")
        self.pool_categories = list(checkpoint.get("pool_categories", []))
        state = checkpoint.get("state_dict", {})
        if checkpoint.get("position_layout") != POSITION_LAYOUT:  # written before the official layout: same model
            convert_row_col_layout(state, self.transformer, "transformer.")
            checkpoint["position_layout"] = POSITION_LAYOUT
        # Checkpoints from before feature standardisation existed: identity statistics are exactly that model.
        t = self.transformer
        state.setdefault("transformer.feature_mean", torch.zeros_like(t.feature_mean))
        state.setdefault("transformer.feature_std", torch.ones_like(t.feature_std))
        state.setdefault("feature_statistics_fitted", torch.tensor(False))
        for key in ("pool_features", "pool_category"):
            if key in state:
                setattr(self, key, torch.empty_like(state[key], device=getattr(self, key).device))
        rng = checkpoint.get("rng_state")
        if rng:
            self._rng.set_state(rng["method"])
            torch.set_rng_state(rng["torch"])
            if rng["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
            kind, keys, *rest = rng["numpy"]
            np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
            random.setstate(_python_state_from_lists(rng["python"]))


def _python_state_to_lists(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _python_state_from_lists(state: list) -> tuple:
    version, internal, gauss = state
    return (version, tuple(internal), gauss)
