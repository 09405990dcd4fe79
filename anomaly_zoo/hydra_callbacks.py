"""Hydra callbacks (conf/hydra/default.yaml): the output folder is checked before Hydra makes it; a multirun ends
with a table of its failed runs and a non-zero exit."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from anomaly_zoo.errors import SWEEP_ID_ENV, failure_folder


def folder_problem(folder: str | Path) -> str | None:
    """Why `folder` cannot be created or written to (None: it can), found by trying: a probe file that never gets a
    name (O_TMPFILE where the system has it) in the folder, or where it would be created."""
    folder = Path(folder).expanduser().absolute()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        return "it is a file, not a folder" if existing == folder else f"{existing} is a file, not a folder"
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        return f"{existing} cannot be written ({err.strerror or err})"
    return None


class OutputFolderCheck(Callback):
    """Hydra makes the run folder and opens its job log before any project code runs, so an unwritable folder
    (below a file, on a read-only mount, without permission) would end in Hydra's traceback; say it in one line."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _require_writable("hydra.run.dir", config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _require_writable("hydra.sweep.dir", config.hydra.sweep.dir)


def _require_writable(key: str, folder: str) -> None:
    problem = folder_problem(folder)
    if problem is not None:
        print(f"error: {key}={folder}: {problem}; choose a folder you can write ({key}=...)", file=sys.stderr)
        raise SystemExit(1)


class SweepSummary(Callback):
    """Failed runs do not stop a sweep; after the last run they are listed and the process exits with status 1."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # this sweep's own notes folder; another sweep running into the same folder keeps its own
        os.environ[SWEEP_ID_ENV] = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        folder = failure_folder(Path(config.hydra.sweep.dir))
        failures = (
            [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"), key=lambda p: (len(p.stem), p.stem))]
            if folder.is_dir()
            else []
        )
        shutil.rmtree(folder, ignore_errors=True)  # reported now
        if not failures:
            return
        lines = [f"\n{len(failures)} run(s) of this sweep failed:", "", "| run | error |", "|---|---|"]
        lines += [f"| {f['run']} | {f['error']} |" for f in failures]
        print("\n".join(lines), file=sys.stderr)
        raise SystemExit(1)
