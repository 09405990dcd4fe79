"""The plug-in contract every method implements.

A method turns a batch of images into per-pixel anomaly maps and per-image scores; nothing else. Metrics,
results files, heatmaps and loggers belong to the shared evaluation code (anomaly_zoo.evaluation),
which receives the `MethodOutput` each test/predict step returns.

Data reaches a method through one door (anomaly_zoo.data.context): the runner calls `setup_fit(TrainingData)` before
fitting and `setup_test(TestContext)` before testing. A method never reads `trainer.datamodule`, so it runs the same
under the framework's runner, a user's own Trainer script and `anomaly_zoo.predict` (which has no datamodule).
"""

from __future__ import annotations

import inspect
import logging
from abc import abstractmethod
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict

import torch
from lightning.pytorch import LightningModule

from anomaly_zoo.data.context import Batch, TestContext, TrainingData
from anomaly_zoo.data.views import ImageView

if TYPE_CHECKING:
    from lightning.fabric.utilities.data import AttributeDict

log = logging.getLogger(__name__)


class CheckpointFormatError(ValueError):
    """A method's own one-line explanation of why a checkpoint does not fit it (kind, size, layout): shown as is."""


class MethodOutput(TypedDict):
    anomaly_maps: torch.Tensor  # (N, H, W) float, higher = more anomalous, any resolution
    pred_scores: torch.Tensor  # (N,) float
    categories: NotRequired[list[str]]  # the class the method assumed per image, where it chooses one


#: The parameters every `predict_batch` declares, in this order (checked when a subclass is defined).
PREDICT_PARAMETERS = ("images", "categories", "paths", "views")


class AnomalyMethod(LightningModule):
    """Base LightningModule. Subclasses implement `predict_batch` and, if they learn, `training_step`.

    What a method needs from the framework is said by properties it may override: `requires_training`,
    `trainer_arguments`, `expected_normalization`, `input_views()`.
    """

    #: What `image` in a batch must look like: methods normalise for their own networks.
    expected_normalization: str = "none"
    #: Constructor arguments that define the network (layers, sizes): test/predict take them from a checkpoint, and
    #: a run that sets one to another value is refused, naming it. The other arguments (inference options) may
    #: differ from the checkpoint's.
    architecture_keys: tuple[str, ...] = ()

    if TYPE_CHECKING:
        # Lightning declares `hparams` as `AttributeDict | MutableMapping`, but it always returns its AttributeDict
        # (created on first access, filled by `save_hyperparameters`): methods read `self.hparams.seed`.
        @property
        def hparams(self) -> AttributeDict: ...

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if getattr(cls.predict_batch, "__isabstractmethod__", False):
            return
        names = [p for p in inspect.signature(cls.predict_batch).parameters if p != "self"][: len(PREDICT_PARAMETERS)]
        if tuple(names) != PREDICT_PARAMETERS:
            raise TypeError(
                f"{cls.__name__}.predict_batch({', '.join(names)}) must take (images, categories, paths=None, "
                "views=None): the framework passes the image files and the method's input views to every method"
            )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Set by `setup_fit` / `setup_test` (the runner): the only data a method sees besides its batches.
        self.training_data: TrainingData | None = None
        self.test_context: TestContext | None = None

    # ------------------------------------------------------------------ what the method needs
    @property
    def requires_training(self) -> bool:
        """False for training-free methods: the runner skips `trainer.fit` and never reads the train split."""
        return True

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """Trainer arguments the method needs whatever the trainer config says (e.g. one epoch, no gradients); the
        runner logs each one that changes the config's value."""
        return {}

    def input_views(self) -> dict[str, ImageView]:
        """Resizes of the original image file the method wants besides `image` (anomaly_zoo.data.views); they reach
        `predict_batch(..., views=)`."""
        return {}

    def check_normalization(self, normalization: str) -> None:
        """Raise if the data comes normalised otherwise than the method expects (called before any work)."""
        if normalization != self.expected_normalization:
            raise ValueError(
                f"{type(self).__name__} expects dataset.normalization={self.expected_normalization!r} "
                f"(it normalises inside its networks) but the data is {normalization!r}"
            )

    # ------------------------------------------------------------------ the one door for data
    def setup_fit(self, data: TrainingData) -> None:
        """Called by the runner before `trainer.fit` with the training split. Overrides call super()."""
        self.training_data = data

    def setup_test(self, context: TestContext) -> None:
        """Called by the runner before `trainer.test` with the test-time context. Overrides call super()."""
        self.test_context = context
        if context.training is not None and self.training_data is None:
            self.training_data = context.training

    def prepare_prediction(self, batches: Callable[[], Iterable[Batch]]) -> str | None:
        """Called by `anomaly_zoo.predict` before scoring, with all the images it will score (category "" where
        unknown). A method whose scores depend on the whole set (OneNIP's transductive scale) prepares from them
        and returns a sentence saying so, which predict logs and writes into its report; others return None."""
        return None

    def rename_categories(self, renames: dict[str, str]) -> None:
        """Called by the runner after loading a checkpoint that named some of the test's categories otherwise (a
        union's `visa:candle` tested as VisA's `candle`): {checkpoint's name: test's name}. Methods that keep per-class
        state rename it; the others (category-agnostic at test time) have nothing to do."""

    def require_training_data(self) -> TrainingData:
        if self.training_data is None:
            raise RuntimeError(
                f"{type(self).__name__} needs its training split: call method.setup_fit(datamodule.training_data()) "
                "before trainer.fit / trainer.test (anomaly_zoo's runner does)"
            )
        return self.training_data

    def result_metadata(self) -> dict[str, Any]:
        """Settings worth a top-level entry in results.json (e.g. how prompts were chosen)."""
        return {}

    @abstractmethod
    def predict_batch(
        self,
        images: torch.Tensor,
        categories: list[str],
        paths: list[str] | None = None,
        views: dict[str, torch.Tensor] | None = None,
    ) -> MethodOutput:
        """Anomaly maps and image scores for a batch of images (normalised as `expected_normalization` says).

        `paths` are the images' files where known (test, predict), for methods that read per-image side data
        (DIVAD's precomputed CutLER masks); `views` the resizes `input_views()` asked for, rendered from the files.
        Both are None on a direct call with tensors.
        """

    def test_step(self, batch: Batch, batch_idx: int) -> MethodOutput:
        return self.score_batch(batch["image"], list(batch["category"]), batch.get("path"), batch.get("views"))

    def predict_step(self, batch: Batch, batch_idx: int) -> MethodOutput:
        return self.score_batch(batch["image"], list(batch["category"]), batch.get("path"), batch.get("views"))

    def score_batch(
        self,
        images: torch.Tensor,
        categories: list[str],
        paths: list[str] | None = None,
        views: dict[str, torch.Tensor] | None = None,
    ) -> MethodOutput:
        """The framework's one way to call `predict_batch`: checks the output's shapes."""
        out = self.predict_batch(images, categories, None if paths is None else list(paths), views or None)
        maps, scores = out["anomaly_maps"], out["pred_scores"]
        n = images.shape[0]
        if maps.ndim != 3 or maps.shape[0] != n or scores.shape != (n,):
            raise RuntimeError(
                f"{type(self).__name__}.predict_batch must return anomaly_maps (N,H,W) and pred_scores (N,) "
                f"for N={n}; got {tuple(maps.shape)} and {tuple(scores.shape)}"
            )
        return out
