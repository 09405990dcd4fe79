"""Collects every test image's map and score in one pre-allocated buffer and scores each category with the metric
suite as soon as its last image has arrived.

Under data-parallel testing each rank scores a shard; outputs are all-gathered per batch together with
their dataset indices and written into their slots on rank 0, so the result equals the single-process
result exactly (DistributedSampler's padding repeats samples, which just rewrite the same slot).

A category is scored when complete, not at the end: a large test split's memory-mapped maps are then read back
while the kernel still holds them in its page cache, instead of from disk once the whole split (50x MVTec AD: 26 GiB
of maps and masks) has pushed them out. The values are those of one scoring at the end: the same images, the same
function, category by category.
"""

from __future__ import annotations

import logging
import math
import tempfile
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from anomaly_zoo.evaluation.dataset_metrics import dataset_metrics_block, validation_maps
from anomaly_zoo.evaluation.per_image import image_table
from anomaly_zoo.methods.components import upsample_maps
from anomaly_zoo.metrics import compute_metrics, mean_over_categories
from anomaly_zoo.metrics.bootstrap import DEFAULT_RESAMPLES, image_intervals
from anomaly_zoo.metrics.dataset_specific import DatasetMetricsRequest
from anomaly_zoo.metrics.memory import category_rows, release_pages
from anomaly_zoo.metrics.protocols import get_protocol

log = logging.getLogger(__name__)

# Above this many bytes of maps, the buffer lives in a memory-mapped temporary file instead of RAM.
MEMMAP_THRESHOLD_BYTES = 2 * 1024**3


def _limited(limit: int | float | None) -> bool:
    """Lightning's `limit_test_batches`: an int is a number of batches (1 = one batch), a float a share (1.0 = all)."""
    return limit is not None and not (isinstance(limit, float) and limit >= 1.0)


class PredictionBuffer:
    """maps (N,H,W) float32, masks (N,H,W) uint8, scores (N,), filled slot by slot.

    Above `MEMMAP_THRESHOLD_BYTES` of maps, maps and masks live in memory-mapped temporary files, and the pages
    written are handed back to the page cache every `RELEASE_EVERY_BYTES` (`release_pages`): a file-backed page
    this process touched counts in its resident memory until then, so without it a 50x MVTec test split (22 GiB
    of maps) would show, and on a tight machine hold, its whole size.
    """

    RELEASE_EVERY_BYTES = 256 * 1024**2

    def __init__(self, n: int, size: tuple[int, int], memmap_dir: str | None = None) -> None:
        h, w = size
        self.maps: np.ndarray  # in RAM, or a np.memmap (an ndarray subclass) for large test sets
        self.masks: np.ndarray
        self.memmapped = n * h * w * 4 > MEMMAP_THRESHOLD_BYTES
        if self.memmapped:
            self._tmp = tempfile.TemporaryDirectory(dir=memmap_dir, prefix="anomaly_zoo_maps_")
            folder = Path(self._tmp.name)
            self.maps = np.lib.format.open_memmap(folder / "maps.npy", "w+", np.float32, (n, h, w))
            self.masks = np.lib.format.open_memmap(folder / "masks.npy", "w+", np.uint8, (n, h, w))
        else:
            self.maps = np.zeros((n, h, w), dtype=np.float32)
            self.masks = np.zeros((n, h, w), dtype=np.uint8)
        self.scores = np.zeros(n, dtype=np.float64)
        self.filled = np.zeros(n, dtype=bool)
        #: per slot: whether its mask has a defect pixel (the official protocols' image labels), kept at write time
        #: so that nobody reads the masks back for it
        self.mask_any = np.zeros(n, dtype=bool)
        self._written = 0

    def put(self, index: np.ndarray, maps: np.ndarray, masks: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """Writes the slots; returns the indices filled for the first time (padding repeats a slot)."""
        fresh = np.unique(index[~self.filled[index]])
        self.maps[index] = maps
        self.masks[index] = masks
        self.scores[index] = scores
        self.filled[index] = True
        self.mask_any[index] = masks.reshape(len(masks), -1).any(1)
        if self.memmapped:
            self._written += maps.nbytes + masks.nbytes
            if self._written >= self.RELEASE_EVERY_BYTES:
                self.release()
        return fresh

    def release(self) -> None:
        """Hand the mapped pages back (no-op in RAM)."""
        if self.memmapped:
            release_pages(self.maps)
            release_pages(self.masks)
            self._written = 0


#: Below this many normal or defective test images in a category its bootstrap intervals say little (warned).
SMALL_STRATUM = 5


def _warn_small_strata(categories: list[str], labels: np.ndarray) -> None:
    cats = np.asarray(categories)
    small = [f"{c} ({int((cats == c).sum() - labels[cats == c].sum())} normal, {int(labels[cats == c].sum())} "
             "defective)" for c in dict.fromkeys(categories)
             if min(labels[cats == c].sum(), (cats == c).sum() - labels[cats == c].sum()) < SMALL_STRATUM]  # fmt: skip
    if small:
        log.warning("bootstrap intervals of %s rest on fewer than %d normal or defective test images: wide or "
                    "undefined (null)", ", ".join(small), SMALL_STRATUM)  # fmt: skip


def _scored(buf: PredictionBuffer) -> np.ndarray:
    return np.flatnonzero(buf.filled)


def _scored_maps(buf: PredictionBuffer, done: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The maps and masks of the scored images: the buffer itself when all were scored (a memory-mapped buffer is
    then read category by category, never copied whole into RAM), else a copy of the scored ones."""
    if done.size == buf.filled.size:
        return buf.maps, buf.masks
    return buf.maps[done], buf.masks[done]


class EvaluationCollector(Callback):
    """Gathers `MethodOutput`s during `trainer.test` and computes per-category metrics at the end, the way
    `protocol` says (`anomaly_zoo.metrics.protocols`: exact, or an official evaluation's), and the metrics the
    dataset's own protocol adds (`dataset_request`: `anomaly_zoo.evaluation.dataset_metrics`)."""

    def __init__(
        self, protocol: str = "exact", bootstrap_resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
        pixel_bootstrap_resamples: int = 0, dataset_request: DatasetMetricsRequest | None = None,
    ) -> None:  # fmt: skip
        self.protocol = get_protocol(protocol)
        self.bootstrap_resamples, self.seed = int(bootstrap_resamples), int(seed)
        self.pixel_bootstrap_resamples = int(pixel_bootstrap_resamples)
        self.buffer: PredictionBuffer | None = None
        self.per_category: dict[str, dict[str, float]] = {}
        self.mean: dict[str, float] = {}
        #: per scored test image (results.json `images`) and the image metrics' bootstrap intervals (`intervals`)
        self.images: dict[str, list] = {}
        self.intervals: dict | None = None
        self.dataset_request = dataset_request or DatasetMetricsRequest()
        #: results.json `dataset_metrics` (None: the dataset's protocol adds no metric)
        self.dataset_metrics: dict | None = None
        #: rank 0, during the test: each slot's category and label, and per category its images not yet written
        self._categories = np.zeros(0, dtype=object)
        self._labels = np.zeros(0, dtype=int)
        self._pending: dict[str, int] = {}

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Lightning attaches `datamodule` to the trainer at run time; the Trainer class does not declare it.
        dataset = trainer.datamodule.test_dataset  # type: ignore[attr-defined]
        size = dataset.size
        self.buffer = PredictionBuffer(len(dataset), size) if trainer.is_global_zero else None
        self.per_category, self.mean = {}, {}
        if trainer.is_global_zero:
            self._categories = np.array([s.category for s in dataset.samples], dtype=object)
            self._labels = np.array([s.label for s in dataset.samples], dtype=int)
            names, counts = np.unique(self._categories.astype(str), return_counts=True)
            self._pending = dict(zip(names.tolist(), counts.tolist(), strict=True))

    def on_test_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        masks = batch["mask"]
        maps = upsample_maps(outputs["anomaly_maps"].float(), tuple(masks.shape[-2:]))
        payload = (batch["index"], maps, masks.to(torch.uint8), outputs["pred_scores"].float())
        if trainer.world_size > 1:
            payload = tuple(t.flatten(0, 1) for t in pl_module.all_gather(payload))
        if trainer.is_global_zero:
            index, map_array, mask_array, score_array = (t.detach().cpu().numpy() for t in payload)
            assert self.buffer is not None  # made on rank 0 by on_test_start
            fresh = self.buffer.put(index, map_array, mask_array, score_array)
            names, counts = np.unique(self._categories[fresh].astype(str), return_counts=True)
            for category, count in zip(names.tolist(), counts.tolist(), strict=True):
                self._pending[category] -= count
                if self._pending[category] == 0:  # its last image: scored now, while its maps are in the cache
                    self._score_category(category)

    def _score_category(self, category: str) -> None:
        """The suite on one category's scored images (`per_category[category]`)."""
        buf = self.buffer
        assert buf is not None
        idx = np.flatnonzero((self._categories == category) & buf.filled)
        with category_rows(buf.maps, idx) as maps, category_rows(buf.masks, idx) as masks:
            self.per_category[category] = compute_metrics(
                buf.scores[idx],
                self._labels[idx],
                maps,
                masks,
                protocol=self.protocol.name,
                extra_pro_limits=self.dataset_request.pro_limits,
            )

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        buf = self.buffer
        assert buf is not None  # made on rank 0 by on_test_start
        buf.release()
        samples = trainer.datamodule.test_dataset.samples  # type: ignore[attr-defined]  # as in on_test_start
        labels, categories = self._labels, self._categories.tolist()  # read from the samples in on_test_start
        if buf.filled.all():
            done = np.arange(buf.filled.size)
        elif _limited(trainer.limit_test_batches):  # asked for (e.g. debug=fast): metrics on the scored images only
            done = np.flatnonzero(buf.filled)
            log.warning(
                "trainer.limit_test_batches=%s: metrics on %d of %d test images only, not comparable with full runs",
                trainer.limit_test_batches, done.size, buf.filled.size,
            )  # fmt: skip
        else:
            raise RuntimeError(
                f"{int((~buf.filled).sum())} of {buf.filled.size} test images got no prediction; "
                "metrics need the whole test split"
            )
        order = list(dict.fromkeys(categories[i] for i in done))  # first-seen order, as the suite keeps it
        for category in order:
            if category not in self.per_category:  # not complete (limit_test_batches): its scored images
                self._score_category(category)
        self.per_category = {c: self.per_category[c] for c in order}
        self.mean = mean_over_categories(self.per_category)
        maps, masks = _scored_maps(buf, done)
        self._dataset_metrics(trainer, pl_module, [samples[i] for i in done], labels[done], buf.scores[done], maps,
                              masks)  # fmt: skip
        self._per_image(trainer.datamodule, samples, labels, categories)  # type: ignore[attr-defined]
        if trainer.logger is not None:
            flat = {f"test/{k}": v for k, v in self.mean.items() if not math.isnan(v)}
            flat.update(
                {
                    f"test/{c}/{k}": v
                    for c, row in self.per_category.items()
                    for k, v in row.items()
                    if not math.isnan(v)
                }
            )
            dataset_mean = (self.dataset_metrics or {}).get("mean", {})
            # written JSON-safe: an undefined dataset metric is None there, not NaN
            flat.update({f"test/{k}": v for k, v in dataset_mean.items() if v is not None and not math.isnan(v)})
            trainer.logger.log_metrics(flat, step=trainer.global_step)

    def _dataset_metrics(self, trainer: Trainer, method: LightningModule, samples: list, labels: np.ndarray,
                         scores: np.ndarray, maps: np.ndarray, masks: np.ndarray) -> None:  # fmt: skip
        """The dataset's own metrics (results.json `dataset_metrics`); the suite's AU-PRO at the dataset's other
        limits moves there from the suite's rows, which keep the seven metrics."""
        request = self.dataset_request
        if not request.any:
            return
        datamodule = trainer.datamodule  # type: ignore[attr-defined]  # as in on_test_start
        val_maps = None
        if request.segf1 and datamodule.val_dataset:
            val_maps = validation_maps(method, datamodule.val_dataloader(), (maps.shape[1], maps.shape[2]))
        self.dataset_metrics = dataset_metrics_block(request, samples, scores, labels, maps, masks,
                                                     self.per_category, datamodule, val_maps)  # fmt: skip
        extra = [k for k in self.mean if k.startswith("PRO@")]
        for row in (*self.per_category.values(), self.mean):
            for key in extra:
                row.pop(key, None)

    def _per_image(self, datamodule, samples, labels: np.ndarray, categories: list[str]) -> None:
        """The per-image table and the image metrics' bootstrap intervals, with the labels the protocol used."""
        buf = self.buffer
        assert buf is not None
        done = _scored(buf)
        if self.protocol.labels_from_masks:
            labels = buf.mask_any.astype(int)
        scores, labels_done = buf.scores[done], labels[done]
        cats = [categories[i] for i in done]
        self.images = image_table([samples[i] for i in done], scores, labels_done, getattr(datamodule, "root", None))
        if self.bootstrap_resamples > 0:
            _warn_small_strata(cats, labels_done)
            self.intervals = image_intervals(scores, labels_done, cats, self.bootstrap_resamples, self.seed,
                                             flip_auroc=self.protocol.flip_auroc)  # fmt: skip
        if self.pixel_bootstrap_resamples > 0 and self.intervals is not None:
            from anomaly_zoo.metrics.pixel_bootstrap import add_pixel_intervals

            log.info("pixel-level bootstrap: %d resamples", self.pixel_bootstrap_resamples)
            maps, masks = _scored_maps(buf, done)
            add_pixel_intervals(self.intervals, maps, masks, labels_done, cats,
                                self.pixel_bootstrap_resamples, self.seed, flip_auroc=self.protocol.flip_auroc,
                                pro=not self.protocol.binned_pro)  # fmt: skip
