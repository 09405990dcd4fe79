"""Rows of a memory-mapped buffer are read in place, and their pages released once the block ends."""

from __future__ import annotations

import numpy as np
import pytest

from anomaly_zoo.metrics import memory
from anomaly_zoo.metrics.memory import category_rows


@pytest.fixture
def mapped(tmp_path):
    arr = np.lib.format.open_memmap(tmp_path / "maps.npy", "w+", np.float32, (6, 4, 4))
    arr[:] = np.arange(arr.size, dtype=np.float32).reshape(arr.shape)
    return arr


def test_a_contiguous_range_of_a_memory_map_is_read_in_place_and_released_after(mapped, monkeypatch):
    released = []
    monkeypatch.setattr(memory, "release_pages", lambda arr: released.append(arr))
    with category_rows(mapped, np.array([2, 3, 4])) as rows:
        assert np.shares_memory(rows, mapped)  # no copy of the category
        assert np.array_equal(rows, mapped[2:5])
        assert not released
    assert len(released) == 1 and released[0] is mapped


def test_scattered_rows_are_a_copy_and_plain_arrays_a_view(mapped):
    idx = np.array([0, 2, 5])
    with category_rows(mapped, idx) as rows:
        assert not np.shares_memory(rows, mapped) and np.array_equal(rows, np.asarray(mapped)[idx])
    plain = np.asarray(mapped).copy()
    with category_rows(plain, np.array([1, 2])) as rows:
        assert np.shares_memory(rows, plain) and type(rows) is np.ndarray
