"""Run a project module the way a user does (`python -m ...` from the repository root) and check it succeeded."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: Offline and quiet: no W&B, no hub, no warning noise in the captured stderr.
OFFLINE_ENV = {"WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}


def run_module(module: str, *args: str, timeout: int = 600, expect: int = 0, **env: str) -> subprocess.CompletedProcess:
    """`python -m module args...` in the repository root; fails the test with the stderr tail unless it exits with
    status `expect`."""
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT, env={**os.environ, **OFFLINE_ENV, **env}, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert proc.returncode == expect, f"python -m {module} exited with {proc.returncode}:\n{proc.stderr[-3000:]}"
    return proc
