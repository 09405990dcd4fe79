"""The datasets `dataset=<name>` can name: layout, categories and download source, in one place.

Sample indexing and downloads are anomalib's (its dataset classes parse each layout, its datamodules'
`prepare_data` download and convert); this registry only records which class serves which name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    dataset_class: str  # anomalib.data.datasets.<class>
    datamodule_class: str | None  # anomalib.data.<class>; its prepare_data() downloads
    categories: tuple[str, ...]
    layout: str
    source: str
    licence: str
    texture_categories: tuple[str, ...] = field(default_factory=tuple)
    subdir: str = ""  # where anomalib's dataset class looks, relative to `root` (VisA: its converted split)
    #: The file suffixes anomalib's parser for this layout indexes (exactly, case included); it skips others.
    extensions: tuple[str, ...] = (".png", ".PNG")
    #: Indexes a category's split itself, (info, root, category, split, options) → Samples (anomalib_sets.index);
    #: None: the MVTec-style path in samples.index_category.
    indexer: Callable[..., list[Any]] | None = None
    #: Dataset keys beyond the common ones, with their defaults (Real-IAD's resolution, MVTec AD 2's test split).
    options: tuple[tuple[str, Any], ...] = ()
    #: Ships its own normal validation images (validation/good): the datamodule's validation split.
    own_val_split: bool = False
    #: Categories published without pixel ground truth: scored with image metrics only.
    mask_free_categories: tuple[str, ...] = ()
    #: Categories are folders under the root (Kaputt's are a metadata column, Kolektor has one set).
    category_dirs: bool = True


def anomalib_categories(module: str) -> tuple[str, ...]:
    import importlib

    return tuple(importlib.import_module(f"anomalib.data.datasets.image.{module}").CATEGORIES)


_MVTEC_LAYOUT = (
    "{root}/{category}/train/good/*.png, {root}/{category}/test/<defect>/*.png, "
    "{root}/{category}/ground_truth/<defect>/*_mask.png"
)


def get_dataset_info(name: str) -> DatasetInfo:
    """Registry lookup; an unknown name lists the known ones."""
    from anomaly_zoo.data import anomalib_sets, synthetic

    builders = {
        "mvtec": lambda: DatasetInfo(
            "mvtec",
            "MVTecADDataset",
            "MVTecAD",
            anomalib_categories("mvtecad"),
            _MVTEC_LAYOUT,
            "https://www.mvtec.com/company/research/datasets/mvtec-ad (dataset.download=true fetches it via anomalib)",
            "CC BY-NC-SA 4.0",
            ("carpet", "grid", "leather", "tile", "wood"),
        ),
        "visa": lambda: DatasetInfo(
            "visa",
            "VisaDataset",
            "Visa",
            anomalib_categories("visa"),
            "anomalib's converted VisA tree: {root}/visa_pytorch/{category}/train/good, test/<good|bad>, "
            "ground_truth/bad",
            "https://github.com/amazon-science/spot-diff (dataset.download=true fetches and converts it via anomalib)",
            "CC BY 4.0",
            subdir="visa_pytorch",
            extensions=(".png", ".jpg", ".JPG"),
        ),
        "btad": lambda: DatasetInfo(
            "btad",
            "BTechDataset",
            "BTech",
            anomalib_categories("btech"),
            "{root}/{01|02|03}/train/ok, test/<ok|ko>, ground_truth/ko (anomalib's BTech layout)",
            "https://avires.dimi.uniud.it/papers/btad/btad.zip (dataset.download=true fetches it via anomalib)",
            "CC BY-SA 4.0",
            extensions=(".bmp", ".png"),
        ),
        "mpdd": lambda: DatasetInfo(
            "mpdd",
            "MPDDDataset",
            None,
            anomalib_categories("mpdd"),
            _MVTEC_LAYOUT,
            "https://github.com/stepanje/MPDD (manual download: no direct link anomalib can fetch)",
            "CC BY-NC-SA 4.0",
        ),
        "folder": lambda: DatasetInfo(
            "folder",
            "FolderDataset",
            None,
            (),
            "anomalib Folder layout: normal_dir, abnormal_dir, optional mask_dir",
            "your own images",
            "yours",
        ),
        "synthetic": lambda: DatasetInfo(
            "synthetic",
            "MVTecADDataset",
            None,
            synthetic.CATEGORIES,
            _MVTEC_LAYOUT,
            "generated offline by anomaly_zoo.data.synthetic from images bundled with scikit-image",
            "scikit-image data (BSD-3-Clause / public domain sources)",
            synthetic.TEXTURE_CATEGORIES,
        ),
        **anomalib_sets.builders(),
    }
    if name not in builders:
        raise KeyError(f"unknown dataset {name!r}; known datasets: {', '.join(builders)}")
    return builders[name]()
