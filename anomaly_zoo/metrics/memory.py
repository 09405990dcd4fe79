"""Memory-mapped arrays that do not stay in this process's resident memory once read or written."""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np


def release_pages(arr: Any) -> None:
    """Drop a `np.memmap`'s pages from this process (MADV_DONTNEED on its shared file mapping); anything else is
    left alone. The data stays in the file and the page cache (the kernel writes dirty shared pages back, and a
    later access reads them again), but it no longer counts in, or holds, this process's resident memory."""
    mapping = getattr(arr, "_mmap", None)
    if isinstance(arr, np.memmap) and mapping is not None and hasattr(mapping, "madvise"):
        mapping.madvise(mmap.MADV_DONTNEED)


@contextmanager
def category_rows(arr: np.ndarray, idx: np.ndarray) -> Iterator[np.ndarray]:
    """`arr[idx]` for the duration of the block: a view for a contiguous index range (test sets are grouped by
    category), a copy otherwise.

    A contiguous range of a `np.memmap` is read in place through the mapping (its pages come from the page cache,
    where a category written a moment ago still is) and the mapping's pages are released from this process when
    the block ends. Copying the range into RAM first, as before, took 17 s of a 160 s 50x run of
    `experiments/bench_eval_scale.py` (timed as `--parts` now does; 0.94 GB per category), for the same resident memory.
    """
    contiguous = bool(idx.size) and idx[-1] - idx[0] + 1 == idx.size
    view = arr[idx[0] : idx[-1] + 1] if contiguous else arr[idx]
    try:
        yield np.asarray(view)
    finally:
        release_pages(arr)
