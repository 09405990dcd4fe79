"""Memory-mapped arrays that do not stay in this process's resident memory once read or written."""

from __future__ import annotations

import mmap
from typing import Any

import numpy as np


def release_pages(arr: Any) -> None:
    """Drop a `np.memmap`'s pages from this process (MADV_DONTNEED on its shared file mapping); anything else is
    left alone. The data stays in the file and the page cache (the kernel writes dirty shared pages back, and a
    later access reads them again), but it no longer counts in, or holds, this process's resident memory."""
    mapping = getattr(arr, "_mmap", None)
    if isinstance(arr, np.memmap) and mapping is not None and hasattr(mapping, "madvise"):
        mapping.madvise(mmap.MADV_DONTNEED)


def taken(arr: Any, index: slice | np.ndarray) -> Any:
    """`arr[index]`; from a `np.memmap`, a copy in RAM, the mapping's pages released after the read."""
    if isinstance(arr, np.memmap):
        copy = np.array(arr[index])
        release_pages(arr)
        return copy
    return arr[index]
