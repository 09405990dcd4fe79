"""The plug-in contract every method implements.

A method turns a batch of images into per-pixel anomaly maps and per-image scores; nothing else. Metrics,
results files, heatmaps and loggers belong to the shared evaluation code (anomaly_zoo.evaluation),
which receives the `MethodOutput` each test/predict step returns.
"""

from __future__ import annotations

import functools
import inspect
from abc import abstractmethod
from typing import Any, ClassVar, NotRequired, TypedDict

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule

from anomaly_zoo.data.views import ImageView


class CheckpointFormatError(ValueError):
    """A method's own one-line explanation of why a checkpoint does not fit it (kind, size, layout): shown as is."""


class MethodOutput(TypedDict):
    anomaly_maps: torch.Tensor  # (N, H, W) float, higher = more anomalous, any resolution
    pred_scores: torch.Tensor  # (N,) float
    categories: NotRequired[list[str]]  # the class the method assumed per image, where it chooses one


class AnomalyMethod(LightningModule):
    """Base LightningModule. Subclasses implement `predict_batch` and, if they learn, `training_step`."""

    #: False for training-free methods: the runner skips `trainer.fit` and never reads the train split.
    requires_training: ClassVar[bool] = True
    #: Trainer arguments the method needs whatever the trainer config says (e.g. one epoch, no gradients).
    trainer_arguments: ClassVar[dict[str, Any]] = {}
    #: What `image` in a batch must look like: methods normalise for their own networks.
    expected_normalization: ClassVar[str] = "none"

    def input_views(self) -> dict[str, ImageView]:
        """Resizes of the original image file the method wants besides `image` (anomaly_zoo.data.views); they reach
        `predict_batch(..., views=)` in methods that declare that parameter."""
        return {}

    def result_metadata(self) -> dict[str, Any]:
        """Settings worth a top-level entry in results.json (e.g. how prompts were chosen)."""
        return {}

    @abstractmethod
    def predict_batch(
        self, images: torch.Tensor, categories: list[str], paths: list[str] | None = None
    ) -> MethodOutput:
        """Anomaly maps and image scores for a batch of [0, 1] images.

        `paths` (optional in subclasses) are the images' files where known (test, predict), for methods that read
        per-image side data (DIVAD's precomputed CutLER masks); `score_batch` passes them only to methods that
        declare them.
        """

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        normalization = getattr(datamodule, "normalization", self.expected_normalization)
        if normalization != self.expected_normalization:
            raise ValueError(
                f"{type(self).__name__} expects dataset.normalization={self.expected_normalization!r} "
                f"(it normalises inside its networks) but the datamodule uses {normalization!r}"
            )

    def test_step(self, batch: dict, batch_idx: int) -> MethodOutput:
        return self.score_batch(batch["image"], list(batch["category"]), batch.get("path"), batch.get("views"))

    def predict_step(self, batch: dict, batch_idx: int) -> MethodOutput:
        return self.score_batch(batch["image"], list(batch["category"]), batch.get("path"), batch.get("views"))

    def score_batch(
        self,
        images: torch.Tensor,
        categories: list[str],
        paths: list[str] | None = None,
        views: dict[str, torch.Tensor] | None = None,
    ) -> MethodOutput:
        """The framework's one way to call `predict_batch`: checks the output's shapes, and passes `paths` and
        `views` only to methods that declare them, so methods written against the two-argument contract keep
        working."""
        extra: dict[str, Any] = {}
        if paths is not None and _takes(type(self), "paths"):
            extra["paths"] = list(paths)
        if views and _takes(type(self), "views"):
            extra["views"] = views
        out = self.predict_batch(images, categories, **extra)
        maps, scores = out["anomaly_maps"], out["pred_scores"]
        n = images.shape[0]
        if maps.ndim != 3 or maps.shape[0] != n or scores.shape != (n,):
            raise RuntimeError(
                f"{type(self).__name__}.predict_batch must return anomaly_maps (N,H,W) and pred_scores (N,) "
                f"for N={n}; got {tuple(maps.shape)} and {tuple(scores.shape)}"
            )
        return out


@functools.cache
def _takes(cls: type, name: str) -> bool:
    parameters = inspect.signature(cls.predict_batch).parameters
    return name in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def upsample_maps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, h, w) → (N, H, W) by bilinear interpolation (no-op when already that size)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]


#: Border handling of `gaussian_blur`: "reflect" mirrors about the edge pixel (torch's reflect, d c b | a b c d);
#: "symmetric" repeats it (scipy.ndimage's default "reflect", c b a | a b c d), as the official DIVAD code blurs
#: with scipy's gaussian_filter.
BLUR_BORDERS = ("reflect", "symmetric")


def _symmetric_index(n: int, radius: int, device) -> torch.Tensor:
    """Indices of a length-n axis padded by `radius` on both sides with half-sample symmetric reflection."""
    i = torch.arange(-radius, n + radius, device=device) % (2 * n)
    return torch.where(i < n, i, 2 * n - 1 - i)


def gaussian_blur(maps: torch.Tensor, sigma: float, border: str = "reflect") -> torch.Tensor:
    """Separable Gaussian blur of (N, H, W) maps, radius 4 sigma (scipy's truncate=4), `border` in BLUR_BORDERS."""
    if border not in BLUR_BORDERS:
        raise ValueError(f"blur border={border!r} is not one of {BLUR_BORDERS}")
    if sigma <= 0:
        return maps
    radius = int(4 * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    out = maps[:, None]
    if border == "symmetric":
        h, w = out.shape[-2:]
        out = out[..., _symmetric_index(w, radius, out.device)]
        out = F.conv2d(out, kernel.view(1, 1, 1, -1))
        out = out[..., _symmetric_index(h, radius, out.device), :]
        return F.conv2d(out, kernel.view(1, 1, -1, 1))[:, 0]
    out = F.conv2d(F.pad(out, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    out = F.conv2d(F.pad(out, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1))
    return out[:, 0]
