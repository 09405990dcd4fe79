"""The one LightningDataModule every method trains and evaluates on."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from anomaly_zoo.backbones.feature_extractor import NORMALIZATIONS
from anomaly_zoo.data import anomalib_sets, synthetic
from anomaly_zoo.data.context import TestContext, TrainingData
from anomaly_zoo.data.image_dataset import MASK_RESIZES, AnomalyImageDataset
from anomaly_zoo.data.registry import DatasetInfo, get_dataset_info
from anomaly_zoo.data.samples import Sample, index_category, index_folder
from anomaly_zoo.data.views import ImageView

log = logging.getLogger(__name__)
PROTOCOLS = ("unified", "per_category")


class AnomalyDataModule(LightningDataModule):
    """Train (normal only), optional validation (held-out normals) and test splits of one dataset.

    protocol=unified: the union of `categories` (default: all), one model for all; per_category: just `category`.
    Images come in [0, 1] unless `normalization` says otherwise; masks are resized to the image size
    (`mask_resize`: nearest, or the official DIVAD evaluation's bilinear-then-non-zero).
    """

    def __init__(
        self,
        name: str,
        root: str,
        protocol: str = "unified",
        category: str | None = None,
        categories: Sequence[str] | None = None,
        image_size: int | Sequence[int] = 256,
        normalization: str = "none",
        train_batch_size: int = 16,
        eval_batch_size: int = 16,
        num_workers: int = 2,
        val_ratio: float = 0.0,
        seed: int = 0,
        download: bool = False,
        require_masks: bool = True,
        mask_resize: str = "nearest",
        # folder layout only
        normal_dir: str | None = None,
        abnormal_dir: str | Sequence[str] | None = None,
        normal_test_dir: str | None = None,
        mask_dir: str | Sequence[str] | None = None,
        extensions: Sequence[str] | None = None,
        normal_test_ratio: float = 0.2,
        # set by the runner from the method (AnomalyMethod.requires_training / input_views), not by dataset configs
        use_train_split: bool = True,
        views: dict[str, ImageView] | None = None,
        # a dataset's own keys (registry DatasetInfo.options): Real-IAD's resolution and json_path, MVTec AD 2's
        # test_split, Kaputt's image_type and image_mode
        **options: Any,
    ) -> None:
        super().__init__()
        if protocol not in PROTOCOLS:
            raise ValueError(f"dataset.protocol={protocol!r} is not one of {PROTOCOLS}")
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"dataset.normalization={normalization!r} is not one of {sorted(NORMALIZATIONS)}")
        if mask_resize not in MASK_RESIZES:
            raise ValueError(f"dataset.mask_resize={mask_resize!r} is not one of {MASK_RESIZES}")
        if not 0.0 <= val_ratio < 1.0:
            raise ValueError(f"dataset.val_ratio={val_ratio} must be in [0, 1)")
        self.info: DatasetInfo = self._dataset_info(name)
        self.options = anomalib_sets.check_options(self.info, options)
        if self.info.own_val_split and val_ratio > 0:
            raise ValueError(f"dataset={name} ships its own validation images (validation/good), the validation split: "
                             "leave dataset.val_ratio=0")  # fmt: skip
        self.name, self.root, self.protocol = name, Path(root).expanduser(), protocol
        self.image_size, self.normalization = image_size, normalization
        self.train_batch_size, self.eval_batch_size, self.num_workers = train_batch_size, eval_batch_size, num_workers
        self.val_ratio, self.seed, self.download, self.require_masks = val_ratio, seed, download, require_masks
        self.mask_resize = mask_resize
        self.folder: dict[str, Any] = {
            "normal_dir": normal_dir,
            "abnormal_dir": abnormal_dir,
            "normal_test_dir": normal_test_dir,
            "mask_dir": mask_dir,
            "extensions": extensions,
        }
        self.normal_test_ratio = normal_test_ratio
        self.categories = self._resolve_categories(category, categories)
        #: False for training-free methods: the train split is not indexed (it need not even exist on disk).
        self.use_train_split = use_train_split
        #: The method's input views (AnomalyMethod.input_views), rendered by the datasets from the same decode.
        self.views: dict[str, ImageView] = dict(views or {})
        #: The training order (the sampler's permutations) and the training workers' base seeds, one draw each
        #: per epoch; saved in checkpoints (state_dict) instead of drawn from the global generator.
        self.train_rng = torch.Generator().manual_seed(seed)
        #: Whether the test split has ground truth to score (MVTec AD 2's test_private[_mixed] have none).
        self.ground_truth = anomalib_sets.has_ground_truth(self.info, self.options)
        #: What results.json says of the pixel metrics: "all", or which categories have no masks (set by setup).
        self.pixel_metrics = "all"
        #: MVTec LOCO: each category's defects_config.json (sPRO's saturation thresholds), set by setup.
        self.defects_configs: dict[str, Path] = {}
        self.train_dataset: AnomalyImageDataset | None = None
        self.val_dataset: AnomalyImageDataset | None = None
        self.test_dataset: AnomalyImageDataset | None = None

    def _dataset_info(self, name: str) -> DatasetInfo:
        return get_dataset_info(name)

    def _resolve_categories(self, category: str | None, categories: Sequence[str] | None) -> list[str]:
        known = self.info.categories
        if self.name == "folder":
            return [category or "folder"]
        if self.protocol == "per_category":
            if not category:
                raise ValueError(f"dataset.protocol=per_category needs dataset.category=<one of: {', '.join(known)}>")
            chosen = [category]
        else:
            chosen = list(categories) if categories else list(known)
        unknown = [c for c in chosen if c not in known]
        if unknown:
            raise ValueError(f"unknown category {unknown} for dataset={self.name}; valid: {', '.join(known)}")
        return chosen

    # ------------------------------------------------------------------ Lightning hooks
    def prepare_data(self) -> None:
        """Runs on one process per node: generate the synthetic set or download where asked to."""
        if self.name == "synthetic":
            synthetic.ensure_synthetic_dataset(self.root, seed=0)
            return
        if self.download:
            anomalib_sets.download(self.info, self.root, self.categories, self.options)

    def setup(self, stage: str | None = None) -> None:
        if self.test_dataset is not None:
            return
        train, val, test = [], [], []
        self._note_mask_free()
        for category in self.categories:
            if self.name == "mvtec_loco":
                self.defects_configs[category] = anomalib_sets.defects_config(self.root, category)
            cat_test = self._index(category, "test")
            if self.info.own_val_split:  # the dataset's own normals, also for training-free methods (thresholds)
                val += self._index(category, "val")
            if not self.use_train_split:
                test += sorted(cat_test, key=lambda s: s.image_path)
                continue
            cat_train = self._index(category, "train")
            if self.name == "folder" and not any(s.label == 0 for s in cat_test):
                # No normal_test_dir: hold out normals for testing, as anomalib's Folder datamodule does.
                held = set(self._held_out(len(cat_train), self.normal_test_ratio).tolist())
                cat_test += [s for i, s in enumerate(cat_train) if i in held]
                cat_train = [s for i, s in enumerate(cat_train) if i not in held]
            if not cat_train:
                raise ValueError(f"no training images for category {category!r} under {self.root}")
            cut = self._held_out(len(cat_train), self.val_ratio)  # empty where the dataset has its own
            val += [cat_train[i] for i in cut]
            keep = np.setdiff1d(np.arange(len(cat_train)), cut)
            train += [cat_train[i] for i in keep]
            test += sorted(cat_test, key=lambda s: s.image_path)

        def make(s: list[Sample]) -> AnomalyImageDataset:
            return AnomalyImageDataset(s, self.image_size, self.normalization, self.require_masks, self.mask_resize,
                                       self.views)  # fmt: skip

        self.train_dataset, self.val_dataset, self.test_dataset = make(train), make(val), make(test)
        log.info(
            "dataset=%s protocol=%s categories=%s: %d train, %d val, %d test images",
            self.name,
            self.protocol,
            self.categories,
            len(train),
            len(val),
            len(test),
        )

    def _note_mask_free(self) -> None:
        """Categories published without masks: their defective images are scored with image metrics only (no
        mask required), and results.json says so."""
        free = [c for c in self.categories if c in self.info.mask_free_categories]
        if not free:
            return
        self.require_masks = False
        self.pixel_metrics = (f"none: {self.name} has no masks" if len(free) == len(self.categories) else
                              f"none for {', '.join(free)}: {self.name} has no masks for them")  # fmt: skip
        log.warning("%s: image metrics only for %s (published without pixel ground truth)", self.name, free)

    def _index(self, category: str, split: str) -> list[Sample]:
        if self.info.indexer is not None:
            return self.info.indexer(self.info, self.root, category, split, self.options)
        if self.name == "folder":
            return index_folder(self.root, category, split, **self.folder)
        return index_category(self.info, self.root, category, split)

    def category_sources(self) -> dict[str, tuple[str, str, str]]:
        """Each category's (member label, registered dataset, own name): what checkpoints record of their data."""
        return {c: (self.info.name, self.info.name, c) for c in self.categories}

    def member_record(self) -> dict[str, dict[str, str]]:
        """The datasets this module reads, by label (one here; `dataset=union`: its members)."""
        return {self.info.name: {"dataset": self.info.name, "root": str(self.root)}}

    def _held_out(self, n: int, ratio: float) -> np.ndarray:
        """A seeded, sorted random subset of range(n) of size round(ratio * n)."""
        return np.sort(np.random.default_rng(self.seed).permutation(n)[: round(ratio * n)])

    def _loader(self, dataset: AnomalyImageDataset | None, batch_size: int, train: bool = False) -> DataLoader:
        """Loaders draw nothing from the global generators, whose states checkpoints restore for the method: the
        training order and the training workers' seeds come from `train_rng`, evaluation workers' seeds from a
        generator of their own (evaluation draws no random numbers)."""
        if dataset is None:
            raise RuntimeError("call datamodule.setup() first")
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=train,
            num_workers=self.num_workers,
            # Training workers start afresh each epoch, seeded from train_rng's next draw (torch: base seed + worker
            # id; Lightning's worker init derives NumPy's and Python's from it): their streams are a function of
            # (seed, epoch, worker, rank), which persistent workers carrying theirs across epochs would not be.
            persistent_workers=self.num_workers > 0 and not train,
            generator=self.train_rng if train else torch.Generator().manual_seed(self.seed),
            pin_memory=False,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, self.train_batch_size, train=True)

    def state_dict(self) -> dict[str, Any]:
        """What Lightning saves of the datamodule in every checkpoint: `train_rng`'s state, so that a resumed run
        shuffles and seeds its workers as the uninterrupted run does from that epoch on."""
        return {"train_rng": self.train_rng.get_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "train_rng" in state_dict:  # checkpoints written before it was saved resume with a fresh order
            self.train_rng.set_state(state_dict["train_rng"])

    def val_dataloader(self) -> DataLoader | list:
        return self._loader(self.val_dataset, self.eval_batch_size) if self.val_dataset else []

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset, self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()

    # ------------------------------------------------------------------ what methods see (anomaly_zoo.data.context)
    def training_data(self) -> TrainingData:
        """The training split for `AnomalyMethod.setup_fit` (after `setup`)."""
        if self.train_dataset is None or not self.use_train_split:
            raise RuntimeError("the training split is not indexed: call setup() with use_train_split=True first")
        return TrainingData(self.train_dataset, list(self.categories))

    def test_context(self) -> TestContext:
        """The test-time context for `AnomalyMethod.setup_test` (after `setup`)."""
        if self.test_dataset is None:
            raise RuntimeError("call datamodule.setup() first")
        training = self.training_data() if self.use_train_split and self.train_dataset is not None else None
        return TestContext(list(self.categories), self.protocol, self.root, self.test_dataloader, training)
