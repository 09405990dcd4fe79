"""The metrics particular datasets' own protocols add to the suite (issue 26), as one optional results block.

- `mvtec_ad2`: `PRO@0.05` (AU-PRO up to FPR 0.05) and `SegF1`; needs normal validation maps per category.
- `realiad`: `S-AUROC`, `S-AP`, `S-F1max` (views grouped into samples); needs each test image's sample id.
- `mvtec_loco`: `sPRO@0.05` (AU-sPRO), and every metric again on good + logical and on good + structural images;
  needs each defective image's defect channels (defects_config.json) and anomaly kind.

`dataset_specific_metrics` computes them per category and their unweighted mean; the suite's seven metrics stay in
`compute_category_metrics`. `PRO@<limit>` is read from the suite's rows (the suite computes it from its one sort
when asked with `extra_pro_limits=request.pro_limits`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from anomaly_zoo.metrics.samples import sample_metrics
from anomaly_zoo.metrics.segf1 import NO_VALIDATION_FIX, ThresholdRule, segf1, validation_threshold
from anomaly_zoo.metrics.spro import SPRO_FPR_LIMIT, GroundTruthChannel, au_spro
from anomaly_zoo.metrics.suite import compute_metrics, mean_over_categories, pro_key


@dataclass(frozen=True)
class DatasetMetricsRequest:
    """Which dataset-specific metrics a run computes."""

    pro_limits: tuple[float, ...] = ()  # AU-PRO at these FPR limits besides the suite's 0.3
    segf1: bool = False  # needs normal validation maps
    spro: bool = False  # needs ground-truth channels (MVTec LOCO)
    spro_limit: float = SPRO_FPR_LIMIT
    sample_level: bool = False  # needs sample ids (Real-IAD)
    by_anomaly_kind: bool = False  # needs each defective image's anomaly kind (MVTec LOCO)

    @property
    def any(self) -> bool:
        return bool(self.pro_limits or self.segf1 or self.spro or self.sample_level or self.by_anomaly_kind)


#: By dataset name (the registry's): what its own protocol reports besides the suite.
DATASET_METRICS: dict[str, DatasetMetricsRequest] = {
    "mvtec_ad2": DatasetMetricsRequest(pro_limits=(0.05,), segf1=True),
    "realiad": DatasetMetricsRequest(sample_level=True),
    "mvtec_loco": DatasetMetricsRequest(spro=True, by_anomaly_kind=True),
}


def request_for(dataset: str) -> DatasetMetricsRequest:
    """The dataset's request; datasets without one get an empty request (nothing added)."""
    return DATASET_METRICS.get(dataset, DatasetMetricsRequest())


def kind_subsets(labels: Any, kinds: Sequence[str | None]) -> dict[str, np.ndarray]:
    """Per anomaly kind of the defective images: the indices of all normal images plus that kind's images
    (MVTec LOCO's "logical" and "structural" rows, each with the good images, as its evaluation script takes them)."""
    labels_np = np.asarray(labels).astype(bool)
    if len(kinds) != labels_np.size:
        raise ValueError(f"got {len(kinds)} anomaly kinds for {labels_np.size} images")
    defective: list[int] = np.flatnonzero(labels_np).tolist()
    unknown = [i for i in defective if kinds[i] is None]
    if unknown:
        raise ValueError(f"{len(unknown)} defective image(s) have no anomaly kind (first: index {unknown[0]})")
    normal: list[int] = np.flatnonzero(~labels_np).tolist()
    return {
        kind: np.array(sorted(normal + [i for i in defective if str(kinds[i]) == kind]), dtype=np.int64)
        for kind in dict.fromkeys(str(kinds[i]) for i in defective)
    }


def dataset_specific_metrics(
    request: DatasetMetricsRequest,
    scores: Any,
    labels: Any,
    maps: np.ndarray,
    masks: np.ndarray,
    categories: Sequence[str],
    *,
    suite_rows: Mapping[str, Mapping[str, float]] | None = None,
    sample_ids: Sequence[Any] | None = None,
    anomaly_kinds: Sequence[str | None] | None = None,
    val_maps: Mapping[str, np.ndarray] | None = None,
    threshold_rule: ThresholdRule | None = None,
    gt_channels: Sequence[Sequence[GroundTruthChannel]] | None = None,
) -> dict[str, Any] | None:
    """The request's metrics per category and their mean (a results.json block); None when nothing is requested.

    scores, labels (N,), maps, masks (N, H, W) and categories (N names): the test split as the suite scored it.
    `suite_rows`: the suite's per-category rows (for `PRO@<limit>`); `sample_ids`, `anomaly_kinds`,
    `gt_channels` (per test image) and `val_maps` (category → normal validation maps (M, H, W)) as the request
    needs them: a requested metric whose input is missing is a one-line error.
    """
    if not request.any:
        return None
    scores_np, labels_np = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    cats = np.asarray(list(categories))
    _require(request, len(cats), suite_rows, sample_ids, anomaly_kinds, val_maps, gt_channels)
    rule = threshold_rule or ThresholdRule()
    rows: dict[str, dict[str, float]] = {}
    thresholds: dict[str, dict[str, Any]] = {}
    by_kind: dict[str, dict[str, dict[str, float]]] = {}
    for category in dict.fromkeys(cats.tolist()):
        idx = np.flatnonzero(cats == category)
        at: list[int] = idx.tolist()
        row: dict[str, float] = {}
        for limit in request.pro_limits:
            row[pro_key(limit)] = float(suite_rows[category][pro_key(limit)])  # type: ignore[index]  # _require
        if request.segf1:
            assert val_maps is not None  # _require
            t = validation_threshold(val_maps.get(category, np.zeros((0, 1, 1))), rule=rule)
            thresholds[category] = {"value": t, **rule.record(), "validation_images": len(val_maps[category])}
            row["SegF1"] = segf1(maps[idx], masks[idx], t)
        if request.spro:
            assert gt_channels is not None
            row[spro_key(request.spro_limit)] = au_spro(maps[idx], [gt_channels[i] for i in at], request.spro_limit)
        if request.sample_level:
            assert sample_ids is not None
            row.update(sample_metrics(scores_np[idx], labels_np[idx], [sample_ids[i] for i in at]))
        rows[category] = row
        if request.by_anomaly_kind:
            assert anomaly_kinds is not None
            for kind, sub in kind_subsets(labels_np[idx], [anomaly_kinds[i] for i in at]).items():
                take = idx[sub]
                kind_row = compute_metrics(scores_np[take], labels_np[take], maps[take], masks[take],
                                           extra_pro_limits=request.pro_limits)  # fmt: skip
                if request.spro:
                    assert gt_channels is not None
                    kind_row[spro_key(request.spro_limit)] = au_spro(
                        maps[take], [gt_channels[i] for i in take.tolist()], request.spro_limit
                    )
                by_kind.setdefault(kind, {})[category] = kind_row
    block: dict[str, Any] = {"categories": rows, "mean": mean_over_categories(rows, ()) if rows else {}}
    block["metrics"] = list(block["mean"])
    if thresholds:
        block["segf1_threshold"] = thresholds
    if by_kind:
        block["by_anomaly_kind"] = {k: {"categories": v, "mean": mean_over_categories(v)} for k, v in by_kind.items()}
    return block


def spro_key(fpr_limit: float) -> str:
    """The results key of the AU-sPRO up to `fpr_limit`: "sPRO@0.05"."""
    return f"sPRO@{fpr_limit:g}"


def _require(
    request: DatasetMetricsRequest,
    n: int,
    suite_rows: Mapping[str, Mapping[str, float]] | None,
    sample_ids: Sequence[Any] | None,
    anomaly_kinds: Sequence[str | None] | None,
    val_maps: Mapping[str, np.ndarray] | None,
    gt_channels: Sequence[Sequence[GroundTruthChannel]] | None,
) -> None:
    """A requested metric without its input is an error naming the input, before any work."""
    if request.pro_limits and (suite_rows is None or any(
            pro_key(x) not in row for row in suite_rows.values() for x in request.pro_limits)):  # fmt: skip
        raise ValueError(f"AU-PRO at {list(request.pro_limits)}: pass the suite's rows computed with "
                         "extra_pro_limits=request.pro_limits")  # fmt: skip
    for wanted, given, what in (
        (request.sample_level, sample_ids, "sample-level metrics need each test image's sample id"),
        (request.by_anomaly_kind, anomaly_kinds, "metrics per anomaly kind need each test image's anomaly kind"),
        (request.spro, gt_channels, "sPRO needs each test image's ground-truth channels"),
    ):
        if wanted and given is None:
            raise ValueError(what)
        if wanted and given is not None and len(given) != n:
            raise ValueError(f"{what}: got {len(given)} for {n} test images")
    if request.segf1 and val_maps is None:
        raise ValueError(f"SegF1 needs normal validation maps per category: {NO_VALIDATION_FIX}")
