"""The benchmarks beyond the MVTec-layout four (issue #26): MVTec AD 2, Real-IAD, MVTec LOCO, Kolektor, AutoVI, VAD,
BMAD and Kaputt. Their registry entries, the dataset keys each one takes, and their indexing: anomalib's dataset
class parses the layout; this module only adds what anomaly_zoo's `Sample` carries beyond it (Real-IAD's object id,
LOCO's anomaly kind and its several mask files) and turns failures into one-line errors naming the file.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from anomaly_zoo.data.registry import DatasetInfo, anomalib_categories
from anomaly_zoo.data.samples import DatasetLayoutError, Sample, ascii_paths, check_image_formats

log = logging.getLogger(__name__)

#: MVTec AD 2's test splits; only `test_public` has ground truth (the other two are scored by MVTec's server).
MVTEC_AD2_TEST_SPLITS = ("test_public", "test_private", "test_private_mixed")
#: Real-IAD's split files by name (anomalib's paths, relative to the root; `{category}` is filled in).
REALIAD_JSONS = {
    "multi_view": "realiad_jsons/realiad_jsons/{category}.json",
    "single_view": "realiad_jsons/realiad_jsons_sv/{category}.json",
}
REALIAD_RESOLUTIONS = ("256", "512", "1024", "raw")


def _info(name: str, dataset_class: str, datamodule_class: str | None, categories: tuple[str, ...], layout: str,
          source: str, licence: str, **kw: Any) -> DatasetInfo:  # fmt: skip
    return DatasetInfo(name, dataset_class, datamodule_class, categories, layout, source, licence, indexer=index, **kw)


def builders() -> dict[str, Any]:
    """Registry builders of this module's datasets (registry.get_dataset_info merges them)."""
    cats = anomalib_categories
    return {
        "mvtec_ad2": lambda: _info(
            "mvtec_ad2",
            "MVTecAD2Dataset",
            "MVTecAD2",
            cats("mvtecad2"),
            "{root}/{category}/train/good/*.png, validation/good/*.png, test_public/{good,bad}/*.png, "
            "test_public/ground_truth/bad/*_mask.png, test_private/*.png, test_private_mixed/*.png",
            "https://www.mvtec.com/company/research/datasets/mvtec-ad-2 (dataset.download=true fetches it via "
            "anomalib)",
            "CC BY-NC-SA 4.0",
            options=(("test_split", "test_public"),),
            own_val_split=True,
        ),
        "realiad": lambda: _info(
            "realiad",
            "RealIADDataset",
            None,
            cats("realiad"),  # anomalib's RealIAD datamodule only prints how
            "{root}/realiad_{resolution}/{category}/{OK,NG/<defect>}/S<id>/*_C<view>_*.jpg (+ *_mask.png for NG), "
            "split files {root}/realiad_jsons/realiad_jsons[_sv]/{category}.json",
            "https://huggingface.co/datasets/REAL-IAD/Real-IAD (gated: request access, download the "
            "realiad_<resolution> and realiad_jsons archives and unzip them into dataset.root)",
            "CC BY-NC-SA 4.0",
            options=(("resolution", 256), ("json_path", "multi_view")),
            extensions=(".jpg", ".png", ".PNG", ".JPG"),
        ),
        "mvtec_loco": lambda: _info(
            "mvtec_loco",
            "MVTecLOCODataset",
            None,
            cats("mvtec_loco"),
            "{root}/{category}/train/good, validation/good, test/{good,logical_anomalies,structural_anomalies}/*.png, "
            "ground_truth/<kind>/<image>/000.png (one PNG per defect region), {category}/defects_config.json",
            "https://www.mvtec.com/company/research/datasets/mvtec-loco (dataset.download=true fetches it via "
            "anomalib's download link)",
            "CC BY-NC-SA 4.0",
            own_val_split=True,
        ),
        "kolektor": lambda: _info(
            "kolektor",
            "KolektorDataset",
            "Kolektor",
            ("kolektor",),
            "{root}/kos<NN>/Part<N>.jpg + Part<N>_label.bmp (KolektorSDD; normal = an all-black label; anomalib "
            "splits the normals 80/20 into train/test, seed 42)",
            "https://www.vicos.si/resources/kolektorsdd/ (dataset.download=true fetches it via anomalib)",
            "CC BY-NC-SA 4.0",
            extensions=(".jpg", ".bmp"),
            category_dirs=False,
        ),
        "autovi": lambda: _info(
            "autovi",
            "AutoVIDataset",
            "AutoVI",
            cats("autovi"),
            "{root}/{category}/train/good/*.png, test/<good|defect>/*.png, ground_truth/<defect>/<image>/0000.png",
            "https://doi.org/10.5281/zenodo.10459003 (dataset.download=true fetches it via anomalib)",
            "CC BY-NC-SA 4.0 (Renault Group)",
            extensions=(".png", ".PNG", ".jpg", ".JPG", ".jpeg", ".JPEG"),
        ),
        "vad": lambda: _info(
            "vad",
            "VADDataset",
            "VAD",
            cats("vad"),
            "{root}/vad/train/good/*.png, test/<good|bad>/*.png, ground_truth/bad/<image>[_mask].png",
            "Valeo Anomaly Dataset, https://eu.mydrive.ch (anomalib's link; dataset.download=true fetches it)",
            "CC BY-NC-SA 4.0",
        ),
        "bmad": lambda: _info(
            "bmad",
            "BMADDataset",
            "BMAD",
            cats("bmad"),
            "{root}/{category}/train/good/*.png, test/<good|Ungood>/img/*.png (+ label/*.png masks where the "
            "sub-dataset has them), valid/...",
            "https://github.com/DorisBao/BMAD (dataset.download=true fetches anomalib's packaged copy)",
            "CC BY-NC-SA 4.0 (each sub-dataset also under its source's terms)",
            mask_free_categories=("Chest", "Histopathology", "Retina_OCT2017"),
        ),
        "kaputt": lambda: _info(
            "kaputt",
            "KaputtDataset",
            "Kaputt",
            cats("kaputt"),
            "{root}/datasets/{query,reference}-{train,validation,test}.parquet, {root}/query-{image,crop,mask}/..., "
            "{root}/reference-{image,crop}/... (categories are item materials)",
            "https://huggingface.co/datasets/amazon/kaputt (gated: accept its terms; dataset.download=true fetches it "
            "via anomalib with an HF token)",
            "CC BY-NC-ND 4.0",
            options=(("image_type", "image"), ("image_mode", "query_only")),
            category_dirs=False,
            extensions=(".jpg", ".png"),
        ),
    }


def check_options(info: DatasetInfo, options: Mapping[str, Any]) -> dict[str, Any]:
    """The dataset keys of `info` with the given values (defaults for the rest); an unknown key or value fails."""
    known = dict(info.options)
    unknown = sorted(set(options) - set(known))
    if unknown:
        takes = f"its own keys: {', '.join(known)}" if known else "it takes no keys beyond the common ones"
        raise ValueError(f"dataset.{unknown[0]} is not a key of dataset={info.name} ({takes})")
    chosen = {**known, **options}
    allowed = {"test_split": MVTEC_AD2_TEST_SPLITS, "resolution": REALIAD_RESOLUTIONS, "image_type": ("image", "crop"),
               "image_mode": ("query_only", "query_and_reference", "reference_only")}  # fmt: skip
    for key, values in allowed.items():
        if key in chosen and str(chosen[key]) not in values:
            raise ValueError(f"dataset.{key}={chosen[key]!r} is not one of {', '.join(values)}")
    return chosen


def has_ground_truth(info: DatasetInfo, options: Mapping[str, Any]) -> bool:
    """Whether the test split the options choose can be scored (MVTec AD 2's private splits cannot)."""
    return dict(options).get("test_split", "test_public") == "test_public"


def defects_config(root: Path, category: str) -> Path:
    """MVTec LOCO's `defects_config.json` of a category (sPRO's saturation thresholds per defect type)."""
    path = root / category / "defects_config.json"
    if not path.is_file():
        raise DatasetLayoutError(
            f"MVTec LOCO file {path} is missing (dataset=mvtec_loco, category {category}): sPRO reads each defect "
            "type's saturation threshold from it; it ships in every category folder of the download"
        )
    return path


def index(info: DatasetInfo, root: Path, category: str, split: str, options: Mapping[str, Any]) -> list[Sample]:
    """Samples of one category and split ("train", "val" or "test"), sorted by path."""
    if not root.is_dir():
        raise DatasetLayoutError(
            f"dataset root {root} does not exist (dataset={info.name}). Expected layout: {info.layout}. "
            f"Source: {info.source}. Set dataset.root=/path/to/{info.name} (or dataset.download=true where supported)."
        )
    opts = check_options(info, options)
    where = _category_dir(info, root, category, opts)
    if info.categories and category not in info.categories:
        raise DatasetLayoutError(
            f"unknown category {category!r} for dataset={info.name}; valid: {', '.join(info.categories)}"
        )
    if where != root:
        _check_folder(info, root, where)
        check_image_formats(replace(info, subdir=where.parent.relative_to(root).as_posix()), root, category)
    kwargs = _constructor_arguments(info, root, category, split, opts)
    dataset_class = getattr(importlib.import_module("anomalib.data.datasets.image"), info.dataset_class)
    try:
        with ascii_paths(root) as (linked,), _object_strings(info):
            frame = dataset_class(root=linked, **kwargs).samples
    except DatasetLayoutError:
        raise
    except Exception as err:
        raise DatasetLayoutError(
            f"cannot index {where} ({split} split) as dataset={info.name}: {type(err).__name__}: "
            f"{' '.join(str(err).split())}. Expected layout: {info.layout}"
        ) from err
    samples = _samples(info, frame, category, where)
    if info.name == "kaputt" and split == "train":
        samples = [s for s in samples if s.label == 0]  # its query train split holds defective items: not ours
    if split == "test" and not samples:
        raise DatasetLayoutError(
            f"no test images in {where} as dataset={info.name}"
            f"{' (' + str(opts['test_split']) + ')' if 'test_split' in opts else ''}: is it another dataset's "
            f"layout? Expected layout: {info.layout}"
        )
    return samples


@contextmanager
def _object_strings(info: DatasetInfo) -> Iterator[None]:
    """anomalib 2.7's LOCO parser puts lists of mask paths into a string column, which pandas 3's default str dtype
    refuses (TypeError): parse it with pandas' former object-dtype strings (an option pandas 3 deprecates)."""
    if info.name != "mvtec_loco":
        yield
        return
    import pandas as pd  # type: ignore[import-untyped]

    with warnings.catch_warnings(), pd.option_context("future.infer_string", False):
        warnings.filterwarnings("ignore", message=".*future.infer_string.*")
        yield


def _category_dir(info: DatasetInfo, root: Path, category: str, opts: Mapping[str, Any]) -> Path:
    if info.name == "realiad":
        return root / f"realiad_{opts['resolution']}" / category
    if not info.category_dirs:
        return root  # one folder (Kolektor), or categories that are a metadata column (Kaputt)
    return root / category


def _check_folder(info: DatasetInfo, root: Path, where: Path) -> None:
    if not where.is_dir():
        raise DatasetLayoutError(
            f"category folder {where} is missing (dataset={info.name}, root={root}). Expected layout: {info.layout}. "
            f"Source: {info.source}."
        )


def _constructor_arguments(info: DatasetInfo, root: Path, category: str, split: str, opts: Mapping[str, Any]
                           ) -> dict[str, Any]:  # fmt: skip
    """The anomalib dataset class's arguments beyond `root` (checking the side files it would read)."""
    kwargs: dict[str, Any] = {"split": split}
    if info.name != "kolektor":
        kwargs["category"] = category
    if info.name == "bmad" and split == "val":
        kwargs["split"] = "valid"  # BMAD names its folder so
    if info.name == "mvtec_ad2":
        kwargs["test_type"] = str(opts["test_split"]).removeprefix("test_")
        if split == "test" and not (root / category / str(opts["test_split"])).is_dir():
            raise DatasetLayoutError(
                f"MVTec AD 2 test split folder {root / category / str(opts['test_split'])} is missing "
                f"(dataset=mvtec_ad2, dataset.test_split={opts['test_split']}). Expected layout: {info.layout}"
            )
    if info.name == "realiad":
        json_path = REALIAD_JSONS.get(str(opts["json_path"]), str(opts["json_path"])).format(category=category)
        if not (root / json_path).is_file():
            raise DatasetLayoutError(
                f"Real-IAD split file {root / json_path} is missing (dataset.json_path={opts['json_path']}; "
                f"multi_view: {REALIAD_JSONS['multi_view']}, single_view: {REALIAD_JSONS['single_view']}, or a path "
                f"relative to the root). Source: {info.source}"
            )
        kwargs.update(resolution=str(opts["resolution"]), json_path=json_path)
    if info.name == "kaputt":
        import importlib.util

        if importlib.util.find_spec("pyarrow") is None:  # else anomalib's parquet read fails deep inside pandas
            raise DatasetLayoutError(
                "dataset=kaputt reads its parquet metadata with pyarrow, which is not installed: "
                "pip install pyarrow (or pip install -e '.[kaputt]')"
            )
        kwargs.update(image_type=opts["image_type"], image_mode=opts["image_mode"])
    return kwargs


def _samples(info: DatasetInfo, frame: Any, category: str, where: Path) -> list[Sample]:
    """anomalib's samples DataFrame → `Sample`s sorted by path, with Real-IAD's object id and LOCO's anomaly kind."""
    samples = []
    base = where.resolve()
    for row in frame.itertuples():
        raw = getattr(row, "mask_path", None)
        if isinstance(raw, list | tuple):  # MVTec LOCO: the files of one image's defect regions
            masks = tuple(str(m) for m in raw)
        else:
            masks = (raw,) if isinstance(raw, str) and raw else ()
        image = str(row.image_path)
        sample_id = None
        if info.name == "realiad":  # the object's folder: its camera views lie side by side in it
            sample_id = f"{category}/{Path(image).resolve().parent.relative_to(base).as_posix()}"
        kind = str(row.label) if info.name == "mvtec_loco" else None  # the test folder: good | logical_/structural_
        samples.append(Sample(image, masks[0] if masks else None, int(row.label_index), category, sample_id, kind,
                              masks if len(masks) > 1 else ()))  # fmt: skip
    return sorted(samples, key=lambda s: s.image_path)


def _present(info: DatasetInfo, root: Path, category: str, options: Mapping[str, Any]) -> bool:
    """Whether a category's data is on disk already (so that dataset.download=true has nothing to do)."""
    if info.name == "kaputt":
        return (root / "datasets").is_dir()
    if not info.category_dirs or info.name == "folder":
        return root.is_dir() and any(root.iterdir())
    if info.indexer is not None:
        return _category_dir(info, root, category, check_options(info, options)).is_dir()
    return (root / info.subdir / category).is_dir()


def download(info: DatasetInfo, root: Path, categories: list[str], options: Mapping[str, Any]) -> None:
    """`dataset.download=true`: anomalib's datamodule fetches the data where it can (MVTec LOCO: anomalib's archive
    link); otherwise one line saying where to get it and where to put it."""
    for category in categories:
        if _present(info, root, category, options):
            continue
        if info.name == "mvtec_loco":  # anomalib's LOCO datamodule has no prepare_data; its dataset module the link
            from anomalib.data.datasets.image.mvtec_loco import DOWNLOAD_INFO
            from anomalib.data.utils import download_and_extract

            download_and_extract(root, DOWNLOAD_INFO)
            continue
        if info.datamodule_class is None:
            raise DatasetLayoutError(
                f"dataset={info.name} cannot be downloaded automatically ({category} is not under {root}): get it "
                f"from {info.source} and put it under {root} as {info.layout}"
            )
        datamodule_class = getattr(importlib.import_module("anomalib.data"), info.datamodule_class)
        takes = inspect.signature(datamodule_class).parameters
        kwargs = {"root": root, **({"category": category} if "category" in takes else {})}
        log.info("downloading/preparing %s/%s into %s via anomalib", info.name, category, root)
        try:
            datamodule_class(**kwargs).prepare_data()
        except (RuntimeError, FileNotFoundError, OSError) as err:
            raise DatasetLayoutError(
                f"dataset={info.name}: anomalib could not download it ({type(err).__name__}: "
                f"{' '.join(str(err).split())[:300]}); get it from {info.source} and put it under {root} as "
                f"{info.layout}"
            ) from err
