"""What a run's dataset adds to, or takes from, the leaderboard columns (issue #26).

- A dataset published without masks (results.json `pixel_metrics`: "none: <dataset> has no masks", or "none for
  <categories>: ..." when only some categories lack them) is scored with image metrics only: its pixel cells are
  left empty (never a number: there was nothing to compare the maps with) and the row says "image metrics only".
- The dataset's own metrics (results.json `dataset_metrics`: MVTec AD 2's PRO@0.05 and SegF1, Real-IAD's S-AUROC,
  S-AP, S-F1max, MVTec LOCO's sPRO@0.05) become extra columns beside the suite's seven; MVTec LOCO's logical and
  structural rows become columns `<kind>/<metric>` (own Markdown tables, CSV columns).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any

from anomaly_zoo.metrics import METRIC_NAMES
from anomaly_zoo.metrics.pixel_bootstrap import PIXEL_METRICS


def is_pixel_metric(name: str) -> bool:
    """Whether a column needs masks: the suite's pixel metrics and the datasets' PRO@x, sPRO@x, SegF1 (also as a
    `<kind>/<metric>` column)."""
    base = name.rsplit("/", 1)[-1]
    return base in PIXEL_METRICS or base == "SegF1" or base.startswith(("PRO@", "sPRO@"))


def image_only_categories(pixel_metrics: str, categories: Iterable[str]) -> list[str] | None:
    """The categories a run scored with image metrics only (None: it has pixel metrics everywhere).

    `pixel_metrics` as the datamodule writes it: "all", "none: ..." (every category) or "none for A, B: ...".
    """
    text = str(pixel_metrics or "all")
    if not text.startswith("none"):
        return None
    head = text.split(":", 1)[0]
    if head.startswith("none for "):
        return [c.strip() for c in head.removeprefix("none for ").split(",") if c.strip()]
    return list(categories)


def scope_note(pixel_metrics: str, categories: Iterable[str]) -> str:
    """The mark of a run without masks: "" (pixel metrics everywhere), "image metrics only", or "... for A, B"."""
    cats = list(categories)
    free = image_only_categories(pixel_metrics, cats)
    if free is None:
        return ""
    return "image metrics only" if set(cats) <= set(free) else f"image metrics only for {', '.join(free)}"


def blank_pixel_metrics(pixel_metrics: str, categories: MutableMapping[str, dict[str, Any]],
                        mean: dict[str, Any]) -> None:  # fmt: skip
    """Empty (None) pixel cells of the categories without masks, and of the mean when no category has masks (when
    some do, the mean is theirs, as the suite averages the categories where a metric is defined)."""
    free = image_only_categories(pixel_metrics, categories)
    if free is None:
        return
    blanked = [categories[c] for c in free if c in categories]
    if set(categories) <= set(free):
        blanked.append(mean)
    for row in blanked:
        for key in [k for k in row if is_pixel_metric(k)]:
            row[key] = None


def merge_dataset_metrics(block: Mapping[str, Any] | None, categories: MutableMapping[str, dict[str, Any]],
                          mean: dict[str, Any]) -> list[str]:  # fmt: skip
    """Adds results.json `dataset_metrics` to a run's category rows and mean (kinds as `<kind>/<metric>`); returns
    the added column names in the block's order."""
    if not block:
        return []
    added: list[str] = []

    def add(prefix: str, part: Mapping[str, Any]) -> None:
        for name, value in (part.get("mean") or {}).items():
            mean[prefix + name] = value
            added.append(prefix + name)
        for category, row in (part.get("categories") or {}).items():
            categories.setdefault(category, {}).update({prefix + k: v for k, v in row.items()})

    add("", block)
    for kind, part in (block.get("by_anomaly_kind") or {}).items():
        add(f"{kind}/", part)
    return list(dict.fromkeys(added))


def extra_columns(runs: Iterable[Any]) -> tuple[list[str], dict[str, list[str]]]:
    """The dataset metrics of a table's runs beyond the suite's seven, first seen first: (plain columns, per anomaly
    kind its `<kind>/<metric>` columns)."""
    names = dict.fromkeys(n for r in runs for n in getattr(r, "dataset_columns", ()) if n not in METRIC_NAMES)
    plain = [n for n in names if "/" not in n]
    kinds: dict[str, list[str]] = {}
    for n in names:
        if "/" in n:
            kinds.setdefault(n.split("/", 1)[0], []).append(n)
    return plain, kinds
