"""Reading a checkpoint file of any supported format without unrestricted unpickling.

Formats: this framework's (Lightning's dict with `state_dict` and `anomaly_zoo` metadata); the official OneNIP/UniAD
code's (`{"state_dict": ...}` as tools/train_val.py @ e93dec5 saves it, or its full variant `{"epoch", "arch":
config.net, "state_dict", "best_metric", "optimizer"}` that UniAD's released files use); a bare state dict.
"""

from __future__ import annotations

import collections
import importlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

#: The key under which a framework checkpoint records what wrote it.
METADATA_KEY = "anomaly_zoo"


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, corrupt, truncated or of no format this framework reads."""


def _numpy_scalar_globals() -> list[Any]:
    """NumPy scalars (the official `best_metric` is a np.float64) as pickled by NumPy 1 and 2: data, not code."""
    # NumPy 2 pickles its scalars with this constructor; NumPy 1 by its old path
    scalar = importlib.import_module("numpy._core.multiarray").scalar
    dtypes = [type(np.dtype(t)) for t in ("f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "?")]
    return [scalar, (scalar, "numpy.core.multiarray.scalar"), np.dtype, *dtypes]


def _global_name(entry: Any) -> str:
    return entry[1] if isinstance(entry, tuple) else f"{entry.__module__}.{entry.__qualname__}"


#: What weights_only loading may build besides tensors and plain containers. `easydict.EasyDict` (the official
#: config objects in `arch`) is read as an OrderedDict, then turned into a plain dict: no easydict code runs, and
#: easydict need not be installed.
SAFE_GLOBALS: list[Any] = [(collections.OrderedDict, "easydict.EasyDict"), *_numpy_scalar_globals()]


def _plain(value: Any) -> Any:
    """Official config objects (EasyDicts read as OrderedDicts) as plain dicts, recursively."""
    if isinstance(value, dict) and not all(isinstance(v, torch.Tensor) for v in value.values()):
        return {k: _plain(v) for k, v in value.items()}  # state dicts (tensors only) keep their type
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def load_restricted(path: str | Path) -> Any:
    """`torch.load(weights_only=True)` with `SAFE_GLOBALS` allowed. Raises CheckpointError naming the file: for a
    file that holds other Python objects, which ones; otherwise as corrupt or truncated."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        try:  # an intact file whose objects are not on the allow-list: name them
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:
            unsafe = []
        others = [g for g in unsafe if g not in {_global_name(entry) for entry in SAFE_GLOBALS}]
        if others:
            raise CheckpointError(
                f"cannot read checkpoint {path}: it holds Python objects that are only read by running code from "
                f"the file ({', '.join(others[:5])}); only tensors, plain containers, easydict.EasyDict and NumPy "
                "scalars are read. Re-save its state_dict alone (torch.save({'state_dict': ...})) where you trust it"
            ) from err
        first_line = str(err).splitlines()[0] if str(err) else ""
        raise CheckpointError(
            f"cannot read checkpoint {path}: {type(err).__name__}: {first_line} "
            "(corrupt or truncated file, or not a checkpoint written by anomaly_zoo/Lightning)"
        ) from err
    return _plain(state) if isinstance(state, dict) else state


def _is_state_dict(value: Any) -> bool:
    return isinstance(value, dict) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())


def read_checkpoint(ckpt_path: str | Path) -> dict[str, Any]:
    """The checkpoint as a dict with a `state_dict`, whatever its format (a bare state dict is wrapped)."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise CheckpointError(f"ckpt_path={ckpt_path}: no such checkpoint file")
    state = load_restricted(path)
    if _is_state_dict(state):  # e.g. torch.save(model.state_dict()) of the official DDP model: `module.` keys
        return {"state_dict": dict(state)}
    if not isinstance(state, dict) or not isinstance(state.get("state_dict"), dict):
        raise CheckpointError(f"checkpoint {path} has no 'state_dict': not a Lightning checkpoint")
    return state
