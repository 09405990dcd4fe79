"""Which of a test's categories a checkpoint was trained on, under which names: a model trained on a union
(`dataset=union`) tested on one of its members, or the reverse.

Checkpoints record each training category as its name → (member label, registered dataset, own name), and the
members' roots. A test category is known when the checkpoint has a category of the same dataset and own name; where
the checkpoint named it otherwise (`mvtec:bottle`, a union's prefix), the method is told the test's name
(`AnomalyMethod.rename_categories`), so that methods which choose by class (OneNIP's oracle and random prompts) find
it. Unified methods score unknown categories too (OneNIP with cosine prompts is category-agnostic); they are named.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _same_folder(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def match_categories(meta: dict[str, Any], sources: dict[str, tuple[str, str, str]],
                     members: dict[str, dict[str, str]]) -> dict[str, Any] | None:  # fmt: skip
    """{"trained_on", "trained", "renames" (checkpoint name → test name), "unknown", "ambiguous"} for a test whose
    categories are `sources` (datamodule.category_sources()) from `members` (datamodule.member_record()); None for a
    checkpoint that records no categories (older, or official files)."""
    trained: dict[str, list[str]] = meta.get("categories") or {}
    if not trained:
        return None
    recorded = meta.get("members") or {}
    by_source: dict[tuple[str, str], list[str]] = {}
    for name, (_, dataset, own) in trained.items():
        by_source.setdefault((dataset, own), []).append(name)
    renames: dict[str, str] = {}
    unknown, ambiguous = [], []
    for name, (key, dataset, own) in sources.items():
        candidates = by_source.get((dataset, own), [])
        if name in candidates:
            continue
        if len(candidates) > 1:  # two members of one dataset (copies): the one read from the same folder
            root = (members.get(key) or {}).get("root")
            candidates = [c for c in candidates if _same_folder((recorded.get(trained[c][0]) or {}).get("root"), root)]
        if len(candidates) == 1:
            renames[candidates[0]] = name
        elif candidates or by_source.get((dataset, own)):
            ambiguous.append(name)
        else:
            unknown.append(name)
    return {"trained_on": {k: v.get("dataset") for k, v in recorded.items()}, "trained": list(trained),
            "renames": renames, "unknown": unknown, "ambiguous": ambiguous}  # fmt: skip


def describe(match: dict[str, Any], ckpt_path: str, test_categories: list[str]) -> str:
    """One paragraph: what the checkpoint was trained on and how this test's categories relate to it."""
    members = ", ".join(k if k == d else f"{k} ({d})" for k, d in match["trained_on"].items()) or "?"
    trained = match["trained"]
    parts = [f"ckpt_path={ckpt_path} was trained on {members}: {len(trained)} categories ({', '.join(trained)})"]
    known = [c for c in test_categories if c not in match["unknown"] and c not in match["ambiguous"]]
    as_named = {test: ckpt for ckpt, test in match["renames"].items()}
    shown = ", ".join(f"{c} (its {as_named[c]})" if c in as_named else c for c in known)
    parts.append(f"this test's categories it knows: {shown or 'none'}")
    if match["unknown"]:
        parts.append(f"unknown to it (scored as unseen classes): {', '.join(match['unknown'])}")
    if match["ambiguous"]:
        parts.append(f"more than one of its members could be these (other folders): {', '.join(match['ambiguous'])}")
    return "; ".join(parts)


def report_checkpoint_categories(checkpoint: dict[str, Any], datamodule: Any, method: Any,
                                 ckpt_path: str) -> dict[str, Any] | None:  # fmt: skip
    """Match, tell the method the test's names, and say so (printed where the test's data differs from the
    training's, logged always). Returns the match for results.json, or None."""
    from anomaly_zoo.checkpoints.read import METADATA_KEY

    match = match_categories(checkpoint.get(METADATA_KEY) or {}, datamodule.category_sources(),
                             datamodule.member_record())  # fmt: skip
    if match is None:
        return None
    if match["renames"]:
        method.rename_categories(match["renames"])
    text = describe(match, ckpt_path, list(datamodule.categories))
    same = set(match["trained"]) == set(datamodule.categories) and not match["renames"]
    if same:
        log.info(text)
    else:
        print(text)
        log.info(text)
    return match
