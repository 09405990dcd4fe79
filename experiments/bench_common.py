"""What the benchmarks share: device sync, timed repeats within a time limit, peak memory, the machine's line, budgets.

Imports only torch and the standard library, so every benchmark (and `bench_gpu.py` on a bare CUDA machine) can use it.
"""

from __future__ import annotations

import datetime
import os
import platform
import resource
import time
from collections.abc import Callable

import torch


def synchronizer(device: torch.device | str) -> Callable[[], None]:
    """A function that waits for the device's queued work (a no-op on the CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def time_calls(
    fn: Callable[[], object],
    sync: Callable[[], None],
    repeats: int | None = None,
    warmup: int = 1,
    max_seconds: float | None = None,
    min_repeats: int = 1,
) -> tuple[float, int]:
    """(seconds per call, calls timed): `warmup` untimed calls, then `repeats` timed ones, or with `repeats=None`
    as many as fit in `max_seconds` (at least `min_repeats`), judged from the last warm-up call's time."""
    estimate = 0.0
    for _ in range(warmup):
        t0 = time.perf_counter()
        fn()
        sync()
        estimate = time.perf_counter() - t0
    if repeats is None:
        fit = int(max_seconds / estimate) if (max_seconds is not None and estimate > 0) else min_repeats
        repeats = max(min_repeats, min(fit, 1000))
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - start) / repeats, repeats


def reset_peak_memory(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device | str) -> float | None:
    """Peak GPU memory allocated by torch since the last reset (None on the CPU: see `process_peak_rss_gib`)."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return None


def process_peak_rss_gib() -> float:
    """The process's peak resident memory so far (Linux reports KiB); it cannot be reset."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def peak_text(device: torch.device | str) -> str:
    gpu = peak_memory_gib(device)
    return f"{gpu:.2f} GiB GPU" if gpu is not None else f"{process_peak_rss_gib():.2f} GiB RSS (process peak)"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def machine_info(device: torch.device | str) -> dict:
    """Device name, versions, threads and date: what every benchmark result is quoted with."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    return {
        "device": torch.cuda.get_device_name(device) if cuda else f"{cpu_model()} CPU",
        "host_cpu": cpu_model(),
        "gpus_visible": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "python": platform.python_version(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def machine_line(device: torch.device | str) -> str:
    m = machine_info(device)
    return f"machine: {m['device']}, {m['torch_threads']} threads, torch {m['torch']}, {m['date'][:10]}"


class Budget:
    """Wall-clock budget: a total, and a share per part that never runs past the total."""

    def __init__(self, total_seconds: float) -> None:
        self.start = time.perf_counter()
        self.deadline = self.start + total_seconds

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def part(self, seconds: float) -> Budget:
        part = Budget(0)
        part.deadline = min(time.perf_counter() + seconds, self.deadline)
        return part

    def elapsed(self) -> float:
        return time.perf_counter() - self.start
