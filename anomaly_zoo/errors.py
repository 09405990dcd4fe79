"""User-facing errors: the root cause of a failure as one clear message, the traceback only on request."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

#: Where a multirun's jobs record their failures, for the summary printed when the sweep ends:
#: `<sweep dir>/.failed_runs/<sweep id>/`, one folder per sweep process, so that two sweeps into one folder
#: (two people, a resubmitted array) each report only their own jobs.
FAILED_DIR = ".failed_runs"
#: The sweep's id, set by SweepSummary when the sweep starts; launchers pass the environment on to their jobs.
SWEEP_ID_ENV = "ANOMALY_ZOO_SWEEP_ID"


def failure_folder(sweep_dir: Path) -> Path:
    return sweep_dir / FAILED_DIR / os.environ.get(SWEEP_ID_ENV, "unknown_sweep")


def root_cause(err: BaseException) -> BaseException:
    """The innermost exception of a `raise ... from` chain (Hydra wraps constructor errors in its own)."""
    seen = {id(err)}
    while err.__cause__ is not None and id(err.__cause__) not in seen:
        err = err.__cause__
        seen.add(id(err))
    return err


def project_error(err: BaseException) -> BaseException | None:
    """The outermost exception of a `raise ... from` chain whose class is anomaly_zoo's own: the project's message
    (which names the file or key and the fix) rather than the library error it explains, e.g. the dataset layout
    message over the pandas length error underneath."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if type(current).__module__.split(".", 1)[0] == "anomaly_zoo":
            return current
        seen.add(id(current))
        current = current.__cause__
    return None


def message(err: BaseException) -> str:
    """`Type: message` of the project's own error in the chain, else of the root cause (Hydra wraps constructor
    errors in its own); a DataLoader worker's wrapper is replaced by the error it wraps."""
    root = project_error(err) or root_cause(err)
    text = str(root)
    if "Original Traceback" in text:  # torch re-raises worker errors with the worker's traceback as the message
        last = [line for line in text.splitlines() if line.strip()][-1]
        name, _, rest = last.partition(": ")
        return f"{name.rsplit('.', 1)[-1]}: {rest}"
    return f"{type(root).__name__}: {text}" if text else type(root).__name__


def one_line(err: BaseException) -> str:
    """`message(err)` on one line (for tables: leaderboard cells, the sweep summary)."""
    return " ".join(message(err).split()).replace("|", "/")


def traceback_requested(cfg: DictConfig | None = None) -> bool:
    """HYDRA_FULL_ERROR=1, or `full_traceback: true` in the config (debug=traceback and debug=fast set it)."""
    return os.environ.get("HYDRA_FULL_ERROR") == "1" or bool(cfg is not None and cfg.get("full_traceback", False))


def _job_info() -> tuple[bool, Path | None, str]:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return False, None, ""
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    return multirun, Path(hc.sweep.dir) if multirun else None, str(hc.runtime.output_dir)


def record_failure(output_dir: str, error: str) -> None:
    """In a multirun, note a failed job for the end-of-sweep summary (one file per job: jobs may run in parallel)."""
    multirun, sweep_dir, _ = _job_info()
    if not multirun or sweep_dir is None:
        return
    folder = failure_folder(sweep_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{Path(output_dir).name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"run": str(output_dir), "error": error}))
    tmp.replace(path)


def clear_messages(task: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Wrap a Hydra task function: a failure prints as `error: <root cause>`, exit status 1, no traceback (unless
    HYDRA_FULL_ERROR=1 or debug=traceback). In a multirun the job's failure is recorded and the sweep goes on; the
    sweep then exits non-zero after its last run (anomaly_zoo.hydra_callbacks.SweepSummary)."""

    @functools.wraps(task)
    def wrapped(cfg: DictConfig) -> Any:
        try:
            return task(cfg)
        except Exception as err:
            if traceback_requested(cfg):
                raise
            multirun, _, out = _job_info()
            print(f"error: {message(err)}", file=sys.stderr)
            if multirun:
                record_failure(out, one_line(err))
                return None
            print("(the full traceback: HYDRA_FULL_ERROR=1 or debug=traceback)", file=sys.stderr)
            raise SystemExit(1) from None

    return wrapped
