"""What a run cost, measured by the runner (results.json `cost`; a column group in every leaderboard)."""

from __future__ import annotations

import resource
import sys
from typing import Any

import torch


def peak_host_memory_bytes() -> int:
    """Peak resident memory of this process (`ru_maxrss`: KiB on Linux, bytes on macOS). DataLoader workers are
    separate processes and not included."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def cost_record(method: torch.nn.Module, trainer: Any, fit_s: float | None, test_s: float, test_images: int) -> dict:
    """Fit wall time, test throughput, peak host (and GPU) memory, parameters, device and precision."""
    params = list(method.parameters())
    device = str(getattr(getattr(trainer, "strategy", None), "root_device", "cpu"))
    record: dict[str, Any] = {
        "fit_s": None if fit_s is None else round(float(fit_s), 3),
        "test_s": round(float(test_s), 3),
        "test_images": int(test_images),
        "test_images_per_s": round(test_images / test_s, 3) if test_s > 0 else None,
        "peak_host_memory_bytes": peak_host_memory_bytes(),
        "peak_gpu_memory_bytes": None,
        "parameters_total": int(sum(p.numel() for p in params)),
        "parameters_trainable": int(sum(p.numel() for p in params if p.requires_grad)),
        "device": device,
        "devices": int(getattr(trainer, "world_size", 1) or 1),
        "precision": str(getattr(trainer, "precision", "32-true")),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        record["peak_gpu_memory_bytes"] = int(torch.cuda.max_memory_allocated())
    return record
