"""Sample-level scores (Real-IAD): one physical object is seen in several images (its views).

A sample's score is the maximum of its views' image scores and its label the maximum of their labels (an object is
defective when any view shows a defect), as the Real-IAD papers and ADer's evaluation (ADEval's `s_auroc`) score
multi-view objects. The metrics are the suite's exact AUROC, AP and F1-max on those per-sample values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from anomaly_zoo.metrics.curves import RankedScores, ap_and_f1max, auroc

SAMPLE_METRIC_NAMES: tuple[str, ...] = ("S-AUROC", "S-AP", "S-F1max")


def sample_scores(
    scores: Any, labels: Any, sample_ids: Sequence[Any], categories: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray, list[tuple[str, Any]]]:
    """Per sample: (max view score, max view label, (category, sample id)), samples in first-seen order.

    Views are grouped by (category, sample id): ids are only unique within a category. A view without a sample
    id (None) is an error, not a sample of its own.
    """
    scores_np = np.asarray(scores, dtype=np.float64)
    labels_np = np.asarray(labels)
    n = scores_np.shape[0]
    if scores_np.shape != (n,) or labels_np.shape != (n,) or len(sample_ids) != n:
        raise ValueError(
            f"scores, labels and sample_ids must have one length; got {scores_np.shape}, {labels_np.shape} "
            f"and {len(sample_ids)}"
        )
    cats = [""] * n if categories is None else list(categories)
    if len(cats) != n:
        raise ValueError(f"got {len(cats)} category names for {n} images")
    missing = [i for i, s in enumerate(sample_ids) if s is None]
    if missing:
        raise ValueError(f"{len(missing)} image(s) have no sample id (first: index {missing[0]}); sample-level "
                         "scores need every view's sample id")  # fmt: skip
    keys = list(zip(cats, sample_ids, strict=True))
    index = {key: i for i, key in enumerate(dict.fromkeys(keys))}
    group = np.fromiter((index[k] for k in keys), dtype=np.int64, count=n)
    s_scores = np.full(len(index), -np.inf)
    s_labels = np.zeros(len(index), dtype=np.int64)
    np.maximum.at(s_scores, group, scores_np)
    np.maximum.at(s_labels, group, labels_np.astype(np.int64))
    return s_scores, s_labels, list(index)


def sample_metrics(scores: Any, labels: Any, sample_ids: Sequence[Any]) -> dict[str, float]:
    """S-AUROC, S-AP, S-F1max of one category's views grouped into samples (exact; NaN with one class only)."""
    s_scores, s_labels, _ = sample_scores(scores, labels, sample_ids)
    positive = s_labels.astype(bool)
    ranked = RankedScores.from_sorted(np.sort(s_scores[positive]), np.sort(s_scores[~positive]))
    ap, f1max = ap_and_f1max(ranked)
    return {"S-AUROC": auroc(ranked), "S-AP": ap, "S-F1max": f1max}
