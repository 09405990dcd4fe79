"""Per test image: what results.json keeps of a run (so that leaderboards can pair runs, resample and split by
defect type without the maps), and the inspection engineer's per-defect view.

The defect type of an image is the folder it lies in (MVTec-style layouts: `<category>/test/<defect type>/`; VisA,
Real-IAD and folder datasets as anomalib lays them out), its label says whether it is normal.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from anomaly_zoo.metrics.curves import RankedScores, auroc


def image_table(samples: Sequence[Any], scores: np.ndarray, labels: np.ndarray, root: str | None) -> dict[str, list]:
    """results.json `images`: per scored image its path (relative to the dataset root where it lies below it, so
    runs on two machines pair up), category, label (as the metrics used it), defect type and score; `sample_id` and
    `anomaly_kind` too where the dataset's samples carry them."""
    base = Path(root).expanduser().resolve() if root else None

    def relative(path: str) -> str:
        resolved = Path(path).resolve()
        if base is not None and resolved.is_relative_to(base):
            return resolved.relative_to(base).as_posix()
        return str(path)

    table = {
        "path": [relative(s.image_path) for s in samples],
        "category": [s.category for s in samples],
        "label": [int(v) for v in labels],
        "defect": [Path(s.image_path).parent.name for s in samples],
        "score": [float(v) for v in scores],
    }
    # where the dataset has them: Real-IAD's object ids (sample-level scores), MVTec LOCO's anomaly kinds
    for key in ("sample_id", "anomaly_kind"):
        if any(getattr(s, key, None) is not None for s in samples):
            table[key] = [getattr(s, key, None) for s in samples]
    return table


def per_defect(images: dict[str, list], threshold: float | None) -> dict[str, dict[str, Any]]:
    """Per category: each defect type's image AUROC against the category's normal test images and, given the
    decision threshold chosen on validation normals ("anomalous" = score > threshold), its recall, and the false-alarm
    rate that threshold gives on the test normals."""
    scores = np.asarray(images["score"], dtype=np.float64)
    labels = np.asarray(images["label"]).astype(bool)
    cats, defects = np.asarray(images["category"]), np.asarray(images["defect"])
    out: dict[str, dict[str, Any]] = {}
    for category in dict.fromkeys(cats.tolist()):
        in_cat = cats == category
        normal = np.sort(scores[in_cat & ~labels])
        row: dict[str, Any] = {"normal_images": int(normal.size)}
        if threshold is not None and normal.size:
            row["false_alarm_rate"] = float(np.mean(normal > threshold))
        types = {}
        for defect in dict.fromkeys(defects[in_cat & labels].tolist()):
            chosen = scores[in_cat & labels & (defects == defect)]
            entry: dict[str, Any] = {"images": int(chosen.size)}
            entry["I-AUROC"] = auroc(RankedScores.from_sorted(np.sort(chosen), normal)) if normal.size else None
            if threshold is not None:
                entry["recall"] = float(np.mean(chosen > threshold))
            types[defect] = entry
        row["defects"] = types
        out[category] = row
    return out
