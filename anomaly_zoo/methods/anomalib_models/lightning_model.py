"""`method=anomalib`: any anomalib image model as a framework method.

The anomalib model is trained with the framework's datamodule and Trainer (its own `training_step`,
`configure_optimizers`, memory-bank fitting and `trainer_arguments` are used) and scored by the framework's metric
suite from its raw maps and scores. anomalib's pre-processor, post-processor (score normalisation on the validation
set), evaluator and visualizer are not used: resizing is `dataset.image_size`, normalisation is applied here.

Composition rather than subclassing: one wrapper serves every model, and `per_category=true` holds one anomalib model
per category side by side (a subclass could only be one model).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, cast

import torch
from anomalib import LearningType
from anomalib.data import ImageBatch
from anomalib.models.components import MemoryBankMixin
from torch import nn

from anomaly_zoo.backbones import FeatureExtractor
from anomaly_zoo.data.context import TrainingData
from anomaly_zoo.methods.anomalib_models.backbone_bridge import (
    BACKBONE_SOURCES,
    AnomalibModelError,
    accepts,
    framework_backbone_arguments,
    load_framework_weights,
    model_normalization,
    pretrained_requests,
)
from anomaly_zoo.methods.anomalib_models.registry import _snake, model_class
from anomaly_zoo.methods.base import AnomalyMethod, MethodOutput
from anomaly_zoo.methods.components import greedy_coreset, upsample_maps

if TYPE_CHECKING:
    from anomalib.models import Patchcore
    from anomalib.models.components import AnomalibModule

ALL = "_all_"  # the key of the single model when one model serves every category
CORESETS = ("anomalib", "fast")


def _has_optimizer(model: AnomalibModule) -> bool:
    try:
        return model.configure_optimizers() is not None
    except Exception:  # some read trainer settings (e.g. max_steps) to build their schedule: they do optimise
        return True


class AnomalibMethod(AnomalyMethod):
    """Wraps `anomalib.models.<model.name>`; `model` holds its name and its own constructor arguments."""

    # Buffers (register_buffer in __init__), declared for the type checker.
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        model: dict[str, Any],
        backbone: FeatureExtractor | None = None,
        backbone_source: str = "auto",
        per_category: bool = False,
        coreset: str = "anomalib",
        image_size: int | list[int] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if backbone_source not in BACKBONE_SOURCES:
            raise ValueError(f"method.backbone_source={backbone_source!r} is not one of {BACKBONE_SOURCES}")
        if coreset not in CORESETS:
            raise ValueError(f"method.coreset={coreset!r} is not one of {CORESETS}")
        # null = the model's default: presets list the main arguments without forcing a value
        spec = {k: v for k, v in (model or {}).items() if v is not None or k == "name"}
        self.model_cls = model_class(spec.pop("name", None))
        self.model_name = _snake(self.model_cls.__name__)
        if backbone_source == "auto":  # the framework's backbone wherever the model takes one and none is named
            takes_one = accepts(self.model_cls, "backbone") and "backbone" not in spec and backbone is not None
            backbone_source = "framework" if takes_one else "model"
        if backbone_source == "framework" and backbone is None:
            raise ValueError("method.backbone_source=framework needs a backbone (the `backbone` config group)")
        self.backbone_source = backbone_source
        self.save_hyperparameters(ignore=["backbone"])
        if coreset == "fast" and self.model_name != "patchcore":
            raise ValueError(f"method.coreset=fast replaces PatchCore's coreset selection; {self.model_name} has none")
        self._model_args = spec
        self._framework_backbone: list[FeatureExtractor] = []  # a list: not a submodule
        if backbone_source == "framework":
            assert backbone is not None  # checked above
            self._framework_backbone = [backbone]
            self._model_args = {**spec, **framework_backbone_arguments(self.model_cls, spec, backbone)}

        # anomalib models by category (or ALL); a ModuleDict's items are plain Modules to a type checker.
        self.models = cast("dict[str, AnomalibModule]", nn.ModuleDict())
        first, own_normalization = self._build()  # also tells the learning type and trainer arguments
        # the framework backbone normalises as it was trained: reuse its own statistics
        if self._framework_backbone:
            mean, std = self._framework_backbone[0].mean, self._framework_backbone[0].std
        else:
            mean, std = own_normalization
        self.register_buffer("mean", mean.reshape(1, 3, 1, 1).clone(), persistent=False)
        self.register_buffer("std", std.reshape(1, 3, 1, 1).clone(), persistent=False)
        self._requires_training = first.learning_type != LearningType.ZERO_SHOT
        self.has_optimizer = _has_optimizer(first)
        if per_category and self.has_optimizer:
            raise ValueError(
                f"method.per_category=true fits one {self.model_name} per category inside one run, which the adapter "
                "supports for models without an optimizer (memory-bank and one-pass models such as patchcore, "
                f"padim, dfm, dfkde). For {self.model_name}, run one job per category instead: "
                "dataset.protocol=per_category dataset.category=<name> (or -m over the categories)."
            )
        if not per_category:
            self.models[ALL] = first
        self.automatic_optimization = first.automatic_optimization
        self._epoch_end_seconds = 0.0
        # anomalib's validation feeds its evaluator and score normalisation, both replaced by the framework.
        self._trainer_arguments = {**first.trainer_arguments, "limit_val_batches": 0, "num_sanity_val_steps": 0}

    @property
    def requires_training(self) -> bool:
        return self._requires_training

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        return self._trainer_arguments

    # ------------------------------------------------------------------ building
    def _build(self) -> tuple[AnomalibModule, tuple[torch.Tensor, torch.Tensor]]:
        """One anomalib model; built under the run's seed so every category's model (and an independent
        anomalib run with the same seed) starts from the same random state (e.g. PaDiM's channel subset)."""
        args = {
            "pre_processor": self._pre_processor(),
            "post_processor": False,
            "evaluator": False,
            "visualizer": False,
            **self._model_args,
        }
        unknown = sorted(k for k in self._model_args if not accepts(self.model_cls, k))
        if unknown:  # before building: a typo should not cost a model (or a download)
            raise TypeError(f"anomalib's {self.model_cls.__name__} has no argument(s) {unknown} (method.model.*)")
        timm_name = self._framework_backbone[0].timm_name if self._framework_backbone else None
        with torch.random.fork_rng(devices=[]), pretrained_requests(timm_name) as requested:
            torch.manual_seed(self.hparams.seed)
            try:
                model = self.model_cls(**{k: v for k, v in args.items() if accepts(self.model_cls, k)})
            except (OSError, ConnectionError, RuntimeError) as err:
                raise AnomalibModelError(
                    f"anomalib's {self.model_cls.__name__} could not be built ({type(err).__name__}: {err}). "
                    "If it downloads weights or data, run once on a machine with network access (anomalib caches "
                    "them) or use method.backbone_source=framework with a local backbone."
                ) from err
        if self._framework_backbone:
            load_framework_weights(model, self._framework_backbone[0], requested)
        normalization = model_normalization(model)
        model.pre_processor = None  # its resize/normalise steps are replaced (see module docstring)
        # The model logs through this module: it is the one Lightning drives. (Overriding methods on the instance is
        # what mypy's method-assign forbids; the relays pass every argument on to Lightning's own methods.)
        model.log = self._relay_log  # type: ignore[method-assign]
        model.log_dict = self._relay_log_dict  # type: ignore[method-assign, assignment]
        return model, normalization

    def _pre_processor(self) -> Any:
        """The model's own pre-processor at `dataset.image_size`: models that size their networks from it
        (GANomaly, FastFlow, ...) then match the images the datamodule delivers. Only its normalisation is applied."""
        size = self.hparams.image_size
        if size is None:
            return True
        size = (size, size) if isinstance(size, int) else tuple(size)
        try:
            return self.model_cls.configure_pre_processor(image_size=size)
        except TypeError:  # a model whose pre-processor has no size: its default
            return True

    def _relay_log(self, name: str, value: Any, *args: Any, **kwargs: Any) -> None:
        self.log(name, value, *args, **kwargs)

    def _relay_log_dict(self, values: dict, *args: Any, **kwargs: Any) -> None:
        self.log_dict(values, *args, **kwargs)

    def _ensure_models(self, categories: list[str]) -> None:
        if not self.hparams.per_category:
            return
        for category in categories:
            if category not in self.models:
                self.models[category] = self._build()[0].to(self.device)

    def setup_fit(self, data: TrainingData) -> None:
        super().setup_fit(data)
        self._ensure_models(list(data.categories))

    def setup(self, stage: str) -> None:
        for model in self.models.values():  # Lightning attaches only direct LightningModule children
            model.trainer = self.trainer

    # ------------------------------------------------------------------ training
    def configure_optimizers(self) -> Any:
        return self.models[ALL].configure_optimizers() if self.has_optimizer else None

    def _anomalib_batch(self, batch: dict, index: list[int] | None = None) -> ImageBatch:
        pick = (lambda x: x[index]) if index is not None else (lambda x: x)
        paths = list(batch["path"])
        return ImageBatch(
            image=pick((batch["image"] - self.mean) / self.std),
            gt_label=pick(torch.as_tensor(batch["label"], device=self.device)),
            gt_mask=pick(batch["mask"] > 0.5),
            image_path=[paths[i] for i in index] if index is not None else paths,
        )

    def training_step(self, batch: dict, batch_idx: int) -> Any:
        if not self.hparams.per_category:
            return self.models[ALL].training_step(self._anomalib_batch(batch), batch_idx)
        categories = list(batch["category"])
        for category in sorted(set(categories)):
            index = [i for i, c in enumerate(categories) if c == category]
            self.models[category].training_step(self._anomalib_batch(batch, index), batch_idx)
        return None

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        return None

    def _call_hooks(self, hook: str) -> None:
        for model in self.models.values():
            getattr(model, hook)()

    def on_fit_start(self) -> None:
        self._call_hooks("on_fit_start")

    def on_train_start(self) -> None:
        self._call_hooks("on_train_start")

    def on_train_epoch_start(self) -> None:
        self._call_hooks("on_train_epoch_start")

    def on_train_epoch_end(self) -> None:
        start = time.perf_counter()
        if self.hparams.coreset == "fast":
            for model in self.models.values():
                self._fast_coreset(cast("Patchcore", model))  # coreset=fast: PatchCore models only (__init__)
        self._call_hooks("on_train_epoch_end")  # memory-bank models fit here (Gaussian, coreset, ...)
        self._epoch_end_seconds += time.perf_counter() - start

    def on_fit_end(self) -> None:
        self._call_hooks("on_fit_end")

    def _fast_coreset(self, patchcore: Patchcore) -> None:
        """PatchCore's memory bank from the framework's k-center greedy (random projection to 128 dims, one
        matrix-vector product per pick) instead of anomalib's full norm per pick (experiments/bench_coreset.py)."""
        if bool(patchcore._is_fitted):
            return
        inner = patchcore.model
        bank = torch.vstack(inner.embedding_store)
        inner.embedding_store.clear()
        size = max(1, int(bank.shape[0] * patchcore.coreset_sampling_ratio))
        inner.memory_bank = bank[greedy_coreset(bank, size, seed=self.hparams.seed).to(bank.device)]
        patchcore._is_fitted = torch.tensor([True], device=self.device)

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["anomalib_categories"] = [k for k in self.models if k != ALL]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._ensure_models(list(checkpoint.get("anomalib_categories", [])))

    # ------------------------------------------------------------------ inference
    def _infer(self, model: AnomalibModule, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(model, MemoryBankMixin) and not bool(model._is_fitted):
            raise RuntimeError(f"{self.model_name} is not fitted: train it, or pass ckpt_path= to anomaly_zoo.test")
        model.eval()
        out = model.model((images - self.mean) / self.std)
        n = images.shape[0]
        scores = out.pred_score.reshape(n).float()
        if out.anomaly_map is None:  # image-level model: a constant map keeps the pixel metrics defined (chance)
            return scores[:, None, None].expand(n, *images.shape[-2:]), scores
        maps = out.anomaly_map.float().reshape(n, *out.anomaly_map.shape[-2:])
        return upsample_maps(maps, (images.shape[-2], images.shape[-1])), scores

    def predict_batch(
        self,
        images: torch.Tensor,
        categories: list[str],
        paths: list[str] | None = None,
        views: dict[str, torch.Tensor] | None = None,
    ) -> MethodOutput:
        if not self.hparams.per_category:
            maps, scores = self._infer(self.models[ALL], images)
            return {"anomaly_maps": maps, "pred_scores": scores}
        maps = torch.empty(images.shape[0], *images.shape[-2:], device=images.device)
        scores = torch.empty(images.shape[0], device=images.device)
        for category in sorted(set(categories)):
            if category not in self.models:
                raise KeyError(
                    f"no {self.model_name} was fitted for category {category!r} (fitted: "
                    f"{', '.join(k for k in self.models)}); method.per_category=true scores only the trained ones"
                )
            index = torch.tensor([i for i, c in enumerate(categories) if c == category], device=images.device)
            maps[index], scores[index] = self._infer(self.models[category], images[index])
        return {"anomaly_maps": maps, "pred_scores": scores}

    def result_metadata(self) -> dict[str, Any]:
        protocol = self.test_context.protocol if self.test_context is not None else "unified"
        if self.hparams.per_category or protocol == "per_category":
            fitted = "one model per category"
        else:
            fitted = "one model for all categories"
        return {
            "anomalib_model": self.model_cls.__name__,
            "learning_type": str(self.models[next(iter(self.models))].learning_type.value) if self.models else None,
            "models_fitted": fitted,
            "backbone_source": self.backbone_source,
            "coreset": self.hparams.coreset if self.model_name == "patchcore" else None,
            # time spent fitting at epoch ends (memory-bank models: the Gaussian / coreset selection)
            "epoch_end_fit_s": round(self._epoch_end_seconds, 3),
        }
