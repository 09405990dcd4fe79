"""Per-dataset means of a run over several datasets (`dataset=union`): results.json `datasets`, beside the mean over
all categories (which the official OneNIP union logs report)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from anomaly_zoo.metrics import mean_over_categories


def dataset_means(
    sources: Mapping[str, tuple[str, str, str]], per_category: Mapping[str, Mapping[str, float]]
) -> dict[str, dict[str, Any]]:
    """{member label: {"dataset", "categories" (the union's names), "mean" (unweighted over them)}}, members in
    order; `sources` is the datamodule's `category_sources()`. Categories without metrics (a partial test) are left
    out; an undefined mean is null."""
    out: dict[str, dict[str, Any]] = {}
    for name, (key, dataset, _) in sources.items():
        if name in per_category:
            out.setdefault(key, {"dataset": dataset, "categories": []})["categories"].append(name)
    for block in out.values():
        mean = mean_over_categories({c: per_category[c] for c in block["categories"]})
        block["mean"] = {k: None if math.isnan(v) else v for k, v in mean.items()}
    return out
