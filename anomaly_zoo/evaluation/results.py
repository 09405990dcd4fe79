"""`results.json`: the one file every run leaves in its Hydra output directory."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def _json_float(value: float) -> float | None:
    # JSON has no NaN: an undefined metric is written as null.
    return None if value is None or math.isnan(value) else float(value)


def write_results(
    output_dir: str | Path,
    method: str,
    dataset: str,
    config: dict[str, Any],
    per_category: dict[str, dict[str, float]],
    mean: dict[str, float],
    runtime_s: float,
    extra: dict[str, Any] | None = None,
) -> Path:
    payload = {
        "method": method,
        "dataset": dataset,
        "config": config,
        "categories": {c: {k: _json_float(v) for k, v in row.items()} for c, row in per_category.items()},
        "mean": {k: _json_float(v) for k, v in mean.items()},
        "runtime_s": float(runtime_s),
        **(extra or {}),
    }
    path = Path(output_dir) / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    tmp.replace(path)
    return path
