"""Which config keys change a run's results: one definition for run skipping, run-folder checks and leaderboards."""

from __future__ import annotations

import hashlib
import json
from typing import Any

#: Dotted-key prefixes that never change a run's results: where files go, how progress is shown or logged, how often
#: checkpoints are written, whether to re-run, how many heatmaps to draw.
RESULT_NEUTRAL_PREFIXES = (
    "paths.",
    "hydra.",
    "logger.",
    "eval.",
    "checkpoint.",
    "force",
    "existing_folder",
    "full_traceback",
    "debug",  # the former name of full_traceback, in older records
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
)
#: Callbacks (`callbacks.<name>._target_`, conf/callbacks/) that only watch a run: progress, summaries, logged
#: learning rates. Others (early stopping, weight averaging, ...) can change results and count.
MONITORING_CALLBACKS = frozenset(
    {"LearningRateMonitor", "TQDMProgressBar", "RichProgressBar", "ModelSummary", "RichModelSummary",
     "DeviceStatsMonitor"}
)  # fmt: skip
#: In a training run `ckpt_path` is a resume point: resuming reproduces the uninterrupted run (tests check it), so
#: the resumed run is the same run. In `test`/`predict` it is the model being evaluated and does change results.
_RESUME_KEYS = ("ckpt_path",)


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} → {"a.b": 1}; lists become JSON strings (hashable, comparable)."""
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: json.dumps(tree) if isinstance(tree, list) else tree}


def is_result_neutral(key: str, task_name: str | None = None) -> bool:
    """True for a dotted config key that does not change results (of a run of `task_name`)."""
    if task_name == "train" and key in _RESUME_KEYS:
        return True
    return any(key == p.rstrip(".") or key.startswith(p.rstrip(".") + ".") for p in RESULT_NEUTRAL_PREFIXES)


def _without_monitoring_callbacks(config: dict[str, Any]) -> dict[str, Any]:
    callbacks = config.get("callbacks")
    if not isinstance(callbacks, dict):
        return config

    def monitoring(entry: Any) -> bool:
        return isinstance(entry, dict) and str(entry.get("_target_", "")).rsplit(".", 1)[-1] in MONITORING_CALLBACKS

    kept = {name: entry for name, entry in callbacks.items() if entry is not None and not monitoring(entry)}
    return {**config, "callbacks": kept}


def result_relevant(config: dict[str, Any]) -> dict[str, Any]:
    """The flattened keys of a resolved config that can change its results (monitoring callbacks never do)."""
    task = config.get("task_name")
    return {k: v for k, v in flatten(_without_monitoring_callbacks(config)).items() if not is_result_neutral(k, task)}


def config_key(config: dict[str, Any]) -> str:
    """A stable hash of a resolved config's result-relevant keys: equal keys mean the same run."""
    return hashlib.sha1(json.dumps(result_relevant(config), sort_keys=True, default=str).encode()).hexdigest()[:16]


def is_seed_key(key: str) -> bool:
    """`seed` and every `<group>.seed` (dataset.seed, method.seed: interpolations of `seed`)."""
    return key == "seed" or key.endswith(".seed")


def seedless_key(config: dict[str, Any]) -> str:
    """`config_key` without the seed keys: runs that differ only in their seed share it (one leaderboard row, one
    W&B group)."""
    relevant = {k: v for k, v in result_relevant(config).items() if not is_seed_key(k)}
    return hashlib.sha1(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


def differing_keys(before: dict[str, Any], after: dict[str, Any], limit: int = 8) -> list[str]:
    """'key: old → new' for the result-relevant keys two resolved configs disagree on (at most `limit`)."""
    a, b = result_relevant(before), result_relevant(after)
    diffs = [f"{k}: {a.get(k, '<unset>')} → {b.get(k, '<unset>')}" for k in sorted(set(a) | set(b))
             if json.dumps(a.get(k), default=str) != json.dumps(b.get(k), default=str)]  # fmt: skip
    return diffs[:limit] + ([f"... and {len(diffs) - limit} more"] if len(diffs) > limit else [])
