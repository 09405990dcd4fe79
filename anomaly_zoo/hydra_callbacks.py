"""Hydra callbacks (conf/hydra/default.yaml): a multirun ends with a table of its failed runs and a non-zero exit."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from anomaly_zoo.errors import FAILED_DIR


class SweepSummary(Callback):
    """Failed runs do not stop a sweep; after the last run they are listed and the process exits with status 1."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        shutil.rmtree(Path(config.hydra.sweep.dir) / FAILED_DIR, ignore_errors=True)  # an earlier sweep's notes

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        folder = Path(config.hydra.sweep.dir) / FAILED_DIR
        failures = (
            [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"), key=lambda p: (len(p.stem), p.stem))]
            if folder.is_dir()
            else []
        )
        if not failures:
            return
        lines = [f"\n{len(failures)} run(s) of this sweep failed:", "", "| run | error |", "|---|---|"]
        lines += [f"| {f['run']} | {f['error']} |" for f in failures]
        print("\n".join(lines), file=sys.stderr)
        raise SystemExit(1)
