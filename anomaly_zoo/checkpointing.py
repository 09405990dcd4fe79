"""Checkpoints during training: `last.ckpt` every `checkpoint.every_n_epochs`, written atomically, carrying what
the model is (method, backbone, input size) so that test/predict can take it from the file."""

from __future__ import annotations

import errno
import os
import random
import shutil
from pathlib import Path
from typing import IO, Any, cast

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from anomaly_zoo.checkpoints.read import METADATA_KEY


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write `<file>.tmp` next to the checkpoint, fsync, then rename over it.

    Hand-written because Lightning's own atomic save stages the file in the system temp folder (fsspec) and moves
    it, which is a plain, interruptible copy whenever /tmp and the run folder are on different file systems (a
    node-local /tmp and a shared cluster file system): a job killed then would leave a truncated last.ckpt.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        try:
            with tmp.open("wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
        except (OSError, RuntimeError) as err:  # torch's zip writer reports a failed write as a RuntimeError
            tmp.unlink(missing_ok=True)  # a partial file would only take more of a full disk
            raise CheckpointWriteError(_write_failure(path, checkpoint, err)) from err
        os.replace(tmp, path)


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (a full disk, a quota): the file, the space it needed, the space left."""


class _ByteCounter:
    """A write-only file that only counts: the size a checkpoint needs, without memory or disk."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes) -> int:
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        pass


def _write_failure(path: Path, checkpoint: dict[str, Any], err: BaseException) -> str:
    """`cannot write checkpoint <path>: <why> (it needs N MB, M MB free there); the previous file is kept`."""
    counter = _ByteCounter()
    torch.save(checkpoint, cast(IO[bytes], counter))  # torch needs only write() and flush()
    free = shutil.disk_usage(path.parent).free
    full = isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)
    why = "no space left on the device (or quota)" if full or free < counter.size else " ".join(str(err).split())
    kept = "the previous checkpoint is kept" if path.exists() else "no earlier checkpoint"
    return (f"cannot write checkpoint {path}: {why}; it needs {counter.size} bytes ({counter.size / 2**20:.1f} MiB), "
            f"{free} bytes ({free / 2**20:.1f} MiB) are free there; the partial {path.name}.tmp was removed, {kept}. "
            "Free some space (or choose another run folder) and run the same command again to resume")  # fmt: skip


class LastCheckpoint(ModelCheckpoint):
    """`last.ckpt` at the end of every `every_n_epochs`-th epoch and when fitting ends.

    Lightning's `save_last=True` writes `last.ckpt` at an epoch's end only when a top-k checkpoint was saved too,
    which with `save_top_k=0` is never: the file appeared only after fitting. Here the one kept "top-1" checkpoint
    (no monitor: the latest) *is* `last.ckpt`. No mid-epoch checkpoint is written on SIGTERM: resuming mid-epoch
    cannot reproduce the uninterrupted run (the shuffled batch order of the epoch is not restorable), while the
    epoch-end file resumes exactly.
    """

    def __init__(self, dirpath: str | Path, every_n_epochs: int = 1) -> None:
        super().__init__(
            dirpath=dirpath, filename="last", save_top_k=1, every_n_epochs=every_n_epochs,
            enable_version_counter=False, save_on_exception=False,
        )  # fmt: skip

    @property
    def path(self) -> Path:
        assert self.dirpath is not None  # always given to __init__
        return Path(self.dirpath) / f"last{self.FILE_EXTENSION}"

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._epoch_unsaved = True
        super().on_train_epoch_end(trainer, pl_module)

    def _save_checkpoint(self, trainer: Trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        self._epoch_unsaved = False

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # The final epoch is saved too when max_epochs is no multiple of every_n_epochs, and for methods that take no
        # optimizer step (Lightning skips saving while the global step stays 0).
        super().on_train_end(trainer, pl_module)
        if getattr(self, "_epoch_unsaved", False):
            trainer.save_checkpoint(self.path)
            self.best_model_path = str(self.path)
            self._epoch_unsaved = False


def global_rng_state() -> dict[str, Any]:
    """torch, CUDA, NumPy and Python global generator states in weights_only-loadable types."""
    # NumPy's stubs type the call without arguments as the dict form; legacy=True (the default) returns the tuple.
    kind, keys, *rest = cast(tuple, np.random.get_state())
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), *rest],
        "python": [version, list(internal), gauss],
    }


def set_global_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


class RecordModel(Callback):
    """Adds `checkpoint["anomaly_zoo"]` (method name and config, backbone config, input size) and the global
    random-number states, restored on resume for every method: the shuffled batch order of the next epoch and any
    noise a method draws then continue as in an uninterrupted run (Lightning saves no generator state itself)."""

    def __init__(self, metadata: dict[str, Any]) -> None:
        self.metadata = metadata

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint[METADATA_KEY] = {**self.metadata, "rng_state": global_rng_state()}

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        state = (checkpoint.get(METADATA_KEY) or {}).get("rng_state")
        if state:
            set_global_rng_state(state)


def checkpoint_callbacks(folder: Path, datamodule, every_n_epochs: int) -> list[ModelCheckpoint]:
    """`last.ckpt`; with a validation split (dataset.val_ratio > 0) also `best.ckpt` by val/loss.

    Never selected on the test split.
    """
    callbacks: list[ModelCheckpoint] = [LastCheckpoint(folder, every_n_epochs)]
    if getattr(datamodule, "val_ratio", 0) > 0:
        callbacks.append(ModelCheckpoint(dirpath=folder, filename="best", monitor="val/loss", mode="min",
                                         save_top_k=1, enable_version_counter=False))  # fmt: skip
    return callbacks


def newest_checkpoint(run_dir: Path) -> Path | None:
    """The newest resumable checkpoint of a run folder: `checkpoints/last.ckpt` or Lightning's SLURM requeue
    checkpoint (`hpc_ckpt_<n>.ckpt`, written on SIGUSR1 before the job is requeued)."""
    candidates = [p for p in (run_dir / "checkpoints").glob("last*.ckpt")] + list(run_dir.glob("hpc_ckpt_*.ckpt"))
    return max(candidates, key=lambda p: p.stat().st_mtime_ns, default=None)
