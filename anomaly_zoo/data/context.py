"""What a method may see of the data: the one door between the datamodule and a method.

The runner hands a method its training split (`AnomalyMethod.setup_fit(TrainingData)`) before fitting and the
test-time context (`AnomalyMethod.setup_test(TestContext)`) before testing; methods never read
`trainer.datamodule`. A batch is a `Batch`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NotRequired, Protocol, TypedDict

import torch

from anomaly_zoo.data.samples import Sample


class Batch(TypedDict):
    """What the datamodule's loaders yield (collated `AnomalyImageDataset` items)."""

    image: torch.Tensor  # (N, 3, H, W), normalised as dataset.normalization says
    mask: torch.Tensor  # (N, H, W) float in {0, 1}
    label: torch.Tensor  # (N,) 0 normal, 1 defective
    category: list[str]
    path: list[str]
    index: torch.Tensor  # (N,) positions in the split: slots of the evaluation buffer
    views: NotRequired[dict[str, torch.Tensor]]  # the method's input views (AnomalyMethod.input_views)


class IndexedImages(Protocol):
    """A split's dataset: item i is a dict with at least `image`, `category`, `path` (an AnomalyImageDataset)."""

    samples: list[Sample]

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, Any]: ...


def distinct_by_category(samples: Sequence[Sample]) -> dict[str, list[int]]:
    """Indices of the samples per category, one per distinct file content (VisA's training list repeats images,
    and a repeated image must not be drawn twice as often as a prompt)."""
    seen: set[tuple[str, str]] = set()
    out: dict[str, list[int]] = {}
    for i, sample in enumerate(samples):
        with open(sample.image_path, "rb") as f:
            digest = hashlib.blake2b(f.read(), digest_size=16).hexdigest()
        if (sample.category, digest) in seen:
            continue
        seen.add((sample.category, digest))
        out.setdefault(sample.category, []).append(i)
    return out


@dataclass
class TrainingData:
    """The training split as a method sees it: images by index, their categories, the distinct images."""

    dataset: IndexedImages
    categories: list[str]
    _distinct: dict[str, list[int]] | None = field(default=None, repr=False)

    @property
    def distinct(self) -> dict[str, list[int]]:
        """`distinct_by_category` of the split (hashes every file once, on first use)."""
        if self._distinct is None:
            self._distinct = distinct_by_category(self.dataset.samples)
        return self._distinct


@dataclass(frozen=True)
class TestContext:
    """What a method may know at test time besides the batches it scores."""

    categories: list[str]
    protocol: str  # unified | per_category
    root: Path | None  # the dataset's root folder (side data such as precomputed masks is found relative to it)
    #: The whole test split, for protocols that read test data before scoring (OneNIP's transductive scale);
    #: a method that calls it is no longer evaluated inductively and must say so in its results.
    test_batches: Callable[[], Iterable[Batch]]
    #: The training split where the run indexed it (methods that learn), e.g. to complete an imported checkpoint.
    training: TrainingData | None = None
