"""Index a dataset into `Sample`s with anomalib's layout parsers, turning their failures into clear errors."""

from __future__ import annotations

import importlib
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from anomaly_zoo.data.registry import DatasetInfo


class DatasetLayoutError(ValueError):
    """The files on disk do not form the dataset the config names."""


@dataclass(frozen=True)
class Sample:
    image_path: str
    mask_path: str | None
    label: int  # 0 normal, 1 defective, -1 unknown (a split published without ground truth: MVTec AD 2's private)
    category: str
    #: The object the image shows, shared by all its views (Real-IAD: `<category>/<OK|NG>/[<defect>/]S0001`, the
    #: folder of its 5 camera views): sample-level scores take the maximum over it. None: the image is its sample.
    sample_id: str | None = None
    #: The kind of anomaly the dataset files the image under, where it reports kinds apart (MVTec LOCO: `good`,
    #: `logical_anomalies`, `structural_anomalies`); None elsewhere.
    anomaly_kind: str | None = None
    #: Every ground-truth file of the image when it has several (MVTec LOCO: one PNG per defect region, pixel values
    #: naming the defect in defects_config.json); the mask is their union. Empty: `mask_path` alone.
    mask_paths: tuple[str, ...] = ()

    @property
    def masks(self) -> tuple[str, ...]:
        """All ground-truth files of the image (none for a normal image)."""
        return self.mask_paths or ((self.mask_path,) if self.mask_path else ())


def _missing_root_message(info: DatasetInfo, root: Path) -> str:
    return (
        f"dataset root {root} does not exist (dataset={info.name}). Expected layout: {info.layout}. "
        f"Source: {info.source}. Set dataset.root=/path/to/{info.name} (or dataset.download=true where supported)."
    )


def check_category(info: DatasetInfo, root: Path, category: str) -> None:
    if info.categories and category not in info.categories:
        raise DatasetLayoutError(
            f"unknown category {category!r} for dataset={info.name}; valid: {', '.join(info.categories)}"
        )
    where = root / info.subdir / category
    if not where.is_dir():
        raise DatasetLayoutError(
            f"category folder {where} is missing (dataset={info.name}, root={root}). Expected layout: {info.layout}. "
            f"Source: {info.source}."
        )


def check_image_formats(info: DatasetInfo, root: Path, category: str, shown: int = 10) -> None:
    """Refuse images anomalib's parser for the layout would not index, by name, before any work.

    Its MVTec-layout parser indexes `.png` only: a `test/good/000.jpg` would silently drop out of the test split, and
    a `.jpg` defect image would leave its mask without an image (a pandas length error naming no file).
    """
    from anomaly_zoo.data.image_dataset import IMAGE_EXTENSIONS  # the reader's (it imports this module)

    where = root / info.subdir / category
    skipped = sorted(p for p in where.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS
                     and p.suffix not in info.extensions and p.is_file())  # fmt: skip
    if not skipped:
        return
    names = ", ".join(str(p.relative_to(where)) for p in skipped[:shown])
    more = f" and {len(skipped) - shown} more" if len(skipped) > shown else ""
    raise DatasetLayoutError(
        f"dataset={info.name} indexes only {'/'.join(info.extensions)} files, so {len(skipped)} image(s) in {where} "
        f"would be left out: {names}{more}. Convert them (e.g. to PNG, masks too), or use dataset=folder, which "
        "takes dataset.extensions=[...]"
    )


def _is_ascii(path: Path) -> bool:
    return all(" " <= ch <= "~" for ch in str(path.absolute()))


@contextmanager
def ascii_paths(*folders: Path) -> Iterator[list[Path]]:
    """The folders, each non-ASCII one replaced by an ASCII-named symlink to it while indexing: anomalib's
    validate_path refuses any path outside printable ASCII (données/, 検査/ ...). It checks the path as given and
    then resolves symlinks, so the samples it lists carry the real paths."""
    if all(_is_ascii(f) for f in folders):
        yield [f.absolute() for f in folders]
        return
    with tempfile.TemporaryDirectory(prefix="anomaly_zoo_ascii_") as tmp:
        links = []
        for i, folder in enumerate(folders):
            link = Path(tmp) / f"d{i}"
            link.symlink_to(folder.absolute(), target_is_directory=True)
            links.append(link)
        yield links


def _anomalib_samples(info: DatasetInfo, root: Path, category: str, split: str):
    module = importlib.import_module("anomalib.data.datasets")
    dataset_class = getattr(module, info.dataset_class)
    try:
        with ascii_paths(root / info.subdir) as (where,):
            return dataset_class(root=where, category=category, split=split).samples
    except Exception as err:
        raise DatasetLayoutError(
            f"cannot index {root / info.subdir / category} ({split} split) as dataset={info.name}: "
            f"{type(err).__name__}: {err}. Expected layout: {info.layout}. "
            f"{_diagnose_masks(root / info.subdir / category)}"
        ) from err


def _diagnose_masks(category_dir: Path) -> str:
    """Name the defective test images that have no mask: the most common cause of a failed MVTec-layout index."""
    test, gt = category_dir / "test", category_dir / "ground_truth"
    if not test.is_dir():
        return ""
    missing = []
    for defect_dir in sorted(p for p in test.iterdir() if p.is_dir() and p.name not in ("good", "ok")):
        for image in sorted(defect_dir.iterdir()):
            candidates = [gt / defect_dir.name / f"{image.stem}_mask.png", gt / defect_dir.name / f"{image.stem}.png"]
            if not any(c.exists() for c in candidates):
                missing.append(str(image))
    if not missing:
        return ""
    return (
        f"{len(missing)} defective test image(s) have no mask, e.g. {missing[0]} "
        f"(expected {gt}/<defect>/<name>_mask.png); add the masks or remove those images."
    )


def _samples_from_frame(frame, category: str) -> list[Sample]:
    """anomalib's samples DataFrame → `Sample`s sorted by path (no mask path → None)."""
    samples = []
    for row in frame.itertuples():
        mask = getattr(row, "mask_path", None)
        mask = mask if isinstance(mask, str) and mask else None
        samples.append(Sample(str(row.image_path), mask, int(row.label_index), category))
    return sorted(samples, key=lambda s: s.image_path)


def index_category(info: DatasetInfo, root: Path, category: str, split: str) -> list[Sample]:
    """Samples of one category and split ("train" or "test"), sorted by path."""
    if not root.is_dir():
        raise DatasetLayoutError(_missing_root_message(info, root))
    check_category(info, root, category)
    check_image_formats(info, root, category)
    frame = _anomalib_samples(info, root, category, split)
    return _samples_from_frame(frame, category)


def index_folder(
    root: Path,
    category: str,
    split: str,
    normal_dir: str,
    abnormal_dir: str | Sequence[str] | None,
    normal_test_dir: str | None,
    mask_dir: str | Sequence[str] | None,
    extensions: Sequence[str] | None,
) -> list[Sample]:
    """Your own images in anomalib's Folder layout (normal dir, abnormal dirs, optional mask dirs)."""
    from anomalib.data.datasets import FolderDataset

    if not root.is_dir():
        raise DatasetLayoutError(
            f"dataset root {root} does not exist (dataset=folder). Set dataset.root to the folder holding "
            f"dataset.normal_dir={normal_dir!r} (and abnormal/mask dirs)."
        )
    folders = {key: [root / sub for sub in ([value] if isinstance(value, str) else value or [])]
               for key, value in (("normal_dir", normal_dir), ("abnormal_dir", abnormal_dir),
                                  ("normal_test_dir", normal_test_dir), ("mask_dir", mask_dir))}  # fmt: skip
    for key in ("normal_dir", "abnormal_dir", "mask_dir"):
        for folder in folders[key]:
            if not folder.is_dir():
                raise DatasetLayoutError(f"dataset.{key}: folder {folder} does not exist")
    indexed = ("normal_dir", "abnormal_dir", "normal_test_dir")  # masks are paired below, by name
    try:
        # every folder as an absolute path: anomalib resolves relative ones against the (resolved) root
        with ascii_paths(root, *(f for key in indexed for f in folders[key])) as (where, *links):
            it = iter(links)
            dirs = {key: [next(it) for _ in folders[key]] for key in indexed}
            frame = FolderDataset(
                name=category,
                root=where,
                normal_dir=dirs["normal_dir"],
                abnormal_dir=dirs["abnormal_dir"] or None,
                normal_test_dir=dirs["normal_test_dir"] or None,
                mask_dir=None,
                split=split,
                extensions=tuple(extensions) if extensions else None,
            ).samples
    except Exception as err:
        raise DatasetLayoutError(f"cannot index folder dataset at {root}: {type(err).__name__}: {err}") from err
    return _attach_masks(_samples_from_frame(frame, category), folders["mask_dir"])


def _attach_masks(samples: list[Sample], mask_dirs: list[Path]) -> list[Sample]:
    """Masks by file name (`<name>.<ext>` or `<name>_mask.<ext>`) for the defective images.

    Hand-written because anomalib's Folder pairs images and masks by sorted position: one missing mask fails with a
    NumPy length error that names no file, or silently shifts every later mask onto the wrong image. Here a
    defective image without a mask keeps `mask_path=None`, which the test-split check reports by name.
    """
    if not mask_dirs:
        return samples
    masks: dict[str, str] = {}
    for folder in mask_dirs:
        for path in sorted(folder.iterdir()):
            if path.is_file():
                masks.setdefault(path.stem, str(path))
    paired = []
    for s in samples:
        stem = Path(s.image_path).stem
        mask = masks.get(stem) or masks.get(f"{stem}_mask") if s.label == 1 else None
        paired.append(Sample(s.image_path, mask, s.label, s.category))
    return paired
