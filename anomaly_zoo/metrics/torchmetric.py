"""The exact metric suite as a `torchmetrics.Metric`, for a LightningModule of one's own.

`AnomalyMetrics` only buffers what it is given (update) and, on compute, hands everything to the suite's own
`compute_metrics` / `compute_category_metrics`: the names and values are the suite's, to the last bit. Under DDP
torchmetrics all-gathers the states before compute, so every rank gets the result on the whole set.

    from anomaly_zoo.metrics import AnomalyMetrics

    class MyModule(LightningModule):
        def __init__(self):
            super().__init__()
            self.test_metrics = AnomalyMetrics(categories=["bottle", "cable"])

        def test_step(self, batch, batch_idx):
            maps, scores = self(batch["image"])  # (N, H, W) at the masks' resolution, (N,)
            self.test_metrics.update(
                maps, scores, batch["mask"], labels=batch["label"], categories=batch["category"], indices=batch["index"]
            )

        def on_test_epoch_end(self):
            self.log_dict(self.test_metrics.compute())  # "I-AUROC", ... (mean) and "bottle/I-AUROC", ...
            self.test_metrics.reset()

Call `update` in the steps, not the metric object itself: torchmetrics' `forward` copies the whole state and
scores the batch alone, which for these set-level metrics costs much and means little.

Ordering and DDP. The values are independent of the order of the images except for floating-point rounding
in PRO's sums (about 1e-16). Pass each image's dataset index as `indices` and compute sorts by it and keeps one
copy of each index, so the result equals the single-process one exactly, and the duplicates a
`DistributedSampler` pads the last shard with are not counted twice. Without `indices` every image given is
counted (padding included) in the order the ranks hold them.

Memory. The states hold every image: N·H·W·4 bytes of float32 maps (kept float32: exactness is the point, and
the suite has no evaluation at a reduced size) plus N·H·W bytes of masks, on the metric's device (the GPU when
the module is there; torchmetrics' `compute_on_cpu=True` moves them to host memory after each update). Compute
concatenates them (one more copy) and, under DDP, all-gathers them onto every rank.

The framework's own evaluation (`anomaly_zoo.evaluation.collector`) does not use this class, and is not meant
to: it writes each gathered batch into a buffer preallocated by dataset index on rank 0 only (memory-mapped above
2 GiB), so only one rank holds the maps, once, the padded duplicates just rewrite their slot, and the suite runs
on that buffer as it is. Here the suite call is the same, but compute first concatenates the list states: one
more copy of the maps in memory and in time (about 0.4 s on top of the suite's 1.6 s for 600 maps of 256x256,
measured on 2 shared CPU cores), which the framework's evaluation has no reason to pay.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from anomaly_zoo.metrics.curves import PRO_FPR_LIMIT
from anomaly_zoo.metrics.protocols import get_protocol
from anomaly_zoo.metrics.suite import _check_limits, _is_binary, compute_category_metrics, compute_metrics

__all__ = ["AnomalyMetrics"]


class AnomalyMetrics(Metric):
    """Image- and pixel-level AUROC, AP, F1max and PRO (`METRIC_NAMES`), exact, per category and their mean.

    Args:
        categories: the category names `update` may be given, fixed so that all ranks encode them alike; None
            (default): one group, and `compute` returns exactly `compute_metrics`'s dict.
        protocol: "exact" (default) or an official evaluation's ("onenip_official", "divad_official"), as
            `compute_metrics(..., protocol=...)`.
        pro_fpr_limit, extra_pro_limits: PRO's integration limit (0.3) and further limits reported as
            "PRO@<limit>" (e.g. (0.05,): MVTec AD 2's AU-PRO), as `compute_metrics`.
        **kwargs: torchmetrics' metric arguments (`compute_on_cpu`, `process_group`, `sync_on_compute`, ...).

    `compute` returns a flat dict of floats: the `METRIC_NAMES` keys, and with `categories` those keys hold the
    unweighted mean over the categories that got images (as `compute_category_metrics` returns it) and each
    such category's values are under "<category>/<name>", in the order of `categories`.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0

    anomaly_maps: list[Tensor] | Tensor
    pred_scores: list[Tensor] | Tensor
    masks: list[Tensor] | Tensor
    labels: list[Tensor] | Tensor
    category_ids: list[Tensor] | Tensor
    indices: list[Tensor] | Tensor

    def __init__(
        self,
        categories: Sequence[str] | None = None,
        protocol: str = "exact",
        pro_fpr_limit: float = PRO_FPR_LIMIT,
        extra_pro_limits: Sequence[float] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.protocol = get_protocol(protocol).name
        self.extra_pro_limits = _check_limits(pro_fpr_limit, extra_pro_limits)
        self.pro_fpr_limit = float(pro_fpr_limit)
        if isinstance(categories, str):
            raise TypeError(f"categories: expected a sequence of names, got the string {categories!r}")
        self.categories: tuple[str, ...] | None = None if categories is None else tuple(categories)
        if self.categories is not None and len(set(self.categories)) != len(self.categories):
            raise ValueError(f"categories: names must be unique; got {list(self.categories)}")
        self._category_id = {name: i for i, name in enumerate(self.categories or ())}
        for name in ("anomaly_maps", "pred_scores", "masks", "labels", "category_ids", "indices"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(
        self,
        anomaly_maps: Tensor,
        pred_scores: Tensor,
        masks: Tensor,
        labels: Tensor | None = None,
        categories: Sequence[str] | None = None,
        indices: Tensor | None = None,
    ) -> None:
        """Buffer one batch.

        anomaly_maps (N, H, W) at the masks' resolution (any float dtype, stored as float32), pred_scores (N,)
        (stored as float64), masks (N, H, W) in {0, 1}; labels (N,) in {0, 1}, by default whether an image's
        mask has a defect pixel; categories: N names from the constructor's `categories` (required exactly when
        those were given); indices (N,): the images' dataset indices, in every update or in none.
        """
        maps = torch.as_tensor(anomaly_maps, device=self.device)
        if maps.ndim != 3:
            raise ValueError(f"anomaly_maps: expected shape (N, H, W), got {tuple(maps.shape)}")
        n = maps.shape[0]
        scores = self._vector(pred_scores, "pred_scores", n)
        masks = torch.as_tensor(masks, device=self.device)
        if masks.shape != maps.shape:
            raise ValueError(
                f"masks: expected the shape of anomaly_maps {tuple(maps.shape)}, got {tuple(masks.shape)} "
                "(resize the anomaly maps to the mask resolution first)"
            )
        stored = self.anomaly_maps[0].shape[1:] if isinstance(self.anomaly_maps, list) and self.anomaly_maps else None
        if stored is not None and maps.shape[1:] != stored:
            raise ValueError(
                f"anomaly_maps: all batches need one map size; got {tuple(maps.shape[1:])} after {tuple(stored)}"
            )
        if n and not _is_binary(masks):  # before the uint8 cast, which would truncate e.g. 0.5 to 0
            raise ValueError("masks: values must be 0 or 1")
        labels = self._vector(masks.flatten(1).any(1) if labels is None else labels, "labels", n)
        if n and not _is_binary(labels):
            raise ValueError("labels: values must be 0 or 1")
        ids = self._encode(categories, n)
        idx = torch.zeros(0, dtype=torch.int64, device=self.device) if indices is None else indices
        idx = self._vector(idx, "indices", n if indices is not None else 0)
        if idx.is_floating_point() or idx.is_complex():
            raise ValueError(f"indices: expected integers, got {idx.dtype}")

        # update() appends to the unsynced list states (a DDP sync turns them into tensors only inside compute()).
        assert isinstance(self.anomaly_maps, list) and isinstance(self.pred_scores, list)
        assert isinstance(self.masks, list) and isinstance(self.labels, list)
        assert isinstance(self.category_ids, list) and isinstance(self.indices, list)
        self.anomaly_maps.append(maps.detach().to(torch.float32))
        self.pred_scores.append(scores.detach().to(torch.float64))
        self.masks.append(masks.detach().to(torch.uint8))
        self.labels.append(labels.detach().to(torch.uint8))
        self.category_ids.append(ids)
        self.indices.append(idx.detach().to(torch.int64))

    def _vector(self, x: Any, name: str, n: int) -> Tensor:
        t = torch.as_tensor(x, device=self.device)
        if t.shape != (n,):
            raise ValueError(f"{name}: expected shape ({n},) for {n} anomaly maps, got {tuple(t.shape)}")
        return t

    def _encode(self, categories: Sequence[str] | None, n: int) -> Tensor:
        if self.categories is None:
            if categories is not None:
                raise ValueError(
                    "categories: this metric was built without categories; pass AnomalyMetrics(categories=[...])"
                )
            return torch.zeros(n, dtype=torch.int64, device=self.device)
        if categories is None:
            raise ValueError(f"categories: required, one name per image from {list(self.categories)}")
        names = [categories] if isinstance(categories, str) else list(categories)
        if len(names) != n:
            raise ValueError(f"categories: expected {n} names for {n} anomaly maps, got {len(names)}")
        unknown = sorted(set(names) - self._category_id.keys())
        if unknown:
            raise ValueError(
                f"categories: unknown names {unknown}; the metric's categories are {list(self.categories)}"
            )
        return torch.tensor([self._category_id[c] for c in names], dtype=torch.int64, device=self.device)

    def compute(self) -> dict[str, float]:
        """The suite's values on everything buffered (all ranks' after a DDP sync)."""
        maps, scores, masks, labels, ids, idx = (
            dim_zero_cat(state) if len(state) else None
            for state in (
                self.anomaly_maps,
                self.pred_scores,
                self.masks,
                self.labels,
                self.category_ids,
                self.indices,
            )
        )
        if maps is None or maps.shape[0] == 0:
            raise RuntimeError("AnomalyMetrics.compute() needs images: update() got none since the last reset()")
        assert scores is not None and masks is not None and labels is not None and ids is not None  # filled together
        n = maps.shape[0]
        if idx is not None and idx.numel():
            if idx.numel() != n:
                raise ValueError(f"indices: given for {idx.numel()} of {n} images; pass them in every update or none")
            keep = _first_of_each_index(idx)
            if keep is not None:
                maps, scores, masks, labels, ids = (t[keep] for t in (maps, scores, masks, labels, ids))
        maps, scores, masks, labels, ids = (t.cpu() for t in (maps, scores, masks, labels, ids))
        if self.categories is None:
            return compute_metrics(
                scores, labels, maps, masks, protocol=self.protocol, pro_fpr_limit=self.pro_fpr_limit,
                extra_pro_limits=self.extra_pro_limits,
            )  # fmt: skip
        names = [self.categories[i] for i in ids.tolist()]
        per_category, mean = compute_category_metrics(
            scores, labels, maps, masks, names, protocol=self.protocol, pro_fpr_limit=self.pro_fpr_limit,
            extra_pro_limits=self.extra_pro_limits,
        )  # fmt: skip
        flat = dict(mean)
        for category in self.categories:
            for key, value in per_category.get(category, {}).items():
                flat[f"{category}/{key}"] = value
        return flat


def _first_of_each_index(idx: Tensor) -> Tensor | None:
    """Positions that order the images by index with one image per index (the first given); None: as they are."""
    order = torch.argsort(idx, stable=True)
    sorted_idx = idx[order]
    first = torch.ones_like(sorted_idx, dtype=torch.bool)
    first[1:] = sorted_idx[1:] != sorted_idx[:-1]
    keep = order[first]
    if keep.numel() == idx.numel() and bool((keep == torch.arange(idx.numel(), device=idx.device)).all()):
        return None
    return keep
