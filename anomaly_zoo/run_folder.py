"""A run's folder: where it writes (`output_dir`), the config key that identifies its results, and the claim on it.

A folder holds one config's run. Claiming it records the config (`run.json`) and holds a lock for the run's
lifetime; a folder of another config is refused (or, with `existing_folder=version`, the run moves to a
`version_<n>` folder inside it); an unfinished training run of the same config is resumed from its newest
checkpoint; a finished one is found again (`finished_run`) and not repeated. A test of a training run's checkpoint
gets a folder of its own inside it (`evaluation_folder`).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any, cast

from omegaconf import DictConfig, OmegaConf, open_dict

from anomaly_zoo import config_keys
from anomaly_zoo.checkpointing import newest_checkpoint
from anomaly_zoo.checkpoints.model import adopt_if_readable
from anomaly_zoo.checkpoints.read import CheckpointError

log = logging.getLogger(__name__)


def output_dir(cfg: DictConfig) -> Path:
    """`paths.output_dir`: Hydra's run folder unless overridden; the logger, results, checkpoints and heatmaps all
    follow it, so `paths.output_dir=...` on the command line moves everything together."""
    return Path(cfg.paths.output_dir)


def resolved_config(cfg: DictConfig) -> dict[str, Any]:
    """The config as a plain dict, interpolations resolved where they can be (what run records and keys are made of)."""
    try:
        return cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=True))  # a DictConfig: a dict
    except Exception:  # the failure may be in the config itself
        return cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=False))


def config_key(cfg: DictConfig) -> str:
    """A stable hash of the resolved config's result-relevant keys (anomaly_zoo.config_keys)."""
    return config_keys.config_key(resolved_config(cfg))


def is_multirun() -> bool:
    """Whether this process runs a job of a Hydra multirun (`-m`): a sweep's jobs share its directory."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def finished_run(cfg: DictConfig, key: str) -> Path | None:
    """A results.json of a successful run with the same config key: this run's own folder or, in a multirun,
    any folder of the same sweep directory."""
    from hydra.core.hydra_config import HydraConfig

    candidates = [output_dir(cfg) / "results.json", *sorted(output_dir(cfg).glob("version_*/results.json"))]
    if is_multirun():
        candidates += sorted(Path(HydraConfig.get().sweep.dir).glob("**/results.json"))
    for path in candidates:
        try:
            found = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if found.get("config_key") == key and found.get("status", "ok") == "ok":
            return path
    return None


#: Written when a run starts (config and key), replaced by results.json's record when it ends.
RUN_RECORD = "run.json"


class RunFolderError(RuntimeError):
    """The run folder holds a run of another config: running here would mix two runs' files."""


class RunFolderBusyError(RuntimeError):
    """Another process holds the run folder (a concurrent sweep, a resubmitted job): this one leaves it alone."""


#: The lock file of a run folder: held (flock) from claiming the folder until the run ends; the system releases it
#: when the holding process dies, so a killed job never leaves a folder locked.
LOCK_FILE = ".lock"
_held_locks: dict[Path, int] = {}


#: Environment variables by which data-parallel launchers (Lightning's, torchrun, SLURM's srun) number processes.
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")


def secondary_rank() -> bool:
    """A data-parallel process other than global rank 0: Lightning starts ranks 1.. after rank 0 has claimed the run
    folder, so they neither lock it (rank 0 holds the lock: waiting for it would hang both) nor write its records."""
    for name in RANK_VARIABLES:
        try:
            if int(os.environ.get(name, "0")) != 0:
                return True
        except ValueError:
            continue
    return False


def hold_run_folder(out: Path) -> None:
    """Hold `out` for this process (raises RunFolderBusyError naming the holder's pid when another process holds it)."""
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise RunFolderBusyError(f"run folder {out} is in use by another process ({holder})") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
    _held_locks[out] = fd


def release_run_folder(out: Path) -> None:
    fd = _held_locks.pop(out, None)
    if fd is not None:
        os.close(fd)  # closing the file releases the flock


def recorded_run(folder: Path) -> dict[str, Any] | None:
    """The folder's latest record: results.json (a run ended) or run.json (a run started), whichever is newer."""
    records = []
    for name in ("results.json", RUN_RECORD):
        try:
            path = folder / name
            found = json.loads(path.read_text())
            records.append((path.stat().st_mtime_ns, name == "results.json", found))
        except (OSError, ValueError):
            continue
    records = [r for r in records if "config_key" in r[2]]
    return max(records, key=lambda r: r[:2])[2] if records else None


def claim_run_folder(cfg: DictConfig, key: str, fit: bool) -> Path | None:
    """Refuse a folder that holds a run of another config; otherwise record this run's config in it.

    Returns the checkpoint to resume from when the folder holds an unfinished training run of this same config
    (a killed or requeued job started again). A failed run of another config that left no checkpoint may be
    replaced: nothing of it is worth keeping.
    """
    out = output_dir(cfg)
    found = recorded_run(out)
    leftovers = sorted(p.name for p in (out / "checkpoints").glob("*.ckpt")) if (out / "checkpoints").is_dir() else []
    if found is None and leftovers:
        raise RunFolderError(
            f"run folder {out} holds checkpoints ({', '.join(leftovers)}) of a run that recorded no config: "
            "choose another folder (hydra.run.dir=... or, for a sweep, hydra.sweep.dir=...) or move them away"
        )
    resume = None
    if found is not None and found.get("config_key") != key:
        if cfg.get("existing_folder", "refuse") == "version" and (found.get("status") != "failed" or leftovers):
            return claim_run_folder(_versioned(cfg, key), key, fit)
        if found.get("status") != "failed" or leftovers:
            diff = config_keys.differing_keys(found.get("config", {}), resolved_config(cfg))
            raise RunFolderError(
                f"run folder {out} holds a {found.get('status', 'finished')} run of another config "
                f"(that run → this one: {'; '.join(diff) or 'same values, recorded by an older version'}); "
                "running here would mix the two runs' files. Choose another folder (hydra.run.dir=... or, for a "
                "sweep, hydra.sweep.dir=...), pass existing_folder=version (a new version_<n> folder inside it) "
                "or delete that one"
            )
    elif found is not None and found.get("status") != "ok" and fit:
        resume = newest_checkpoint(out)
    if secondary_rank():  # rank 0 started this process after claiming (and holding) the folder: it is rank 0's
        return resume
    hold_run_folder(out)  # after the checks (a refused folder gets no lock file); then check again, held
    if recorded_run(out) != found:  # another process ran here between the check and the lock
        release_run_folder(out)
        again = recorded_run(out)
        if again is not None and again.get("config_key") == key and again.get("status") == "ok":
            raise RunFolderBusyError(f"run folder {out} was finished by another process meanwhile")
        return claim_run_folder(cfg, key, fit)
    tmp = out / f"{RUN_RECORD}.tmp"
    tmp.write_text(json.dumps({"status": "started", "config_key": key, "config": resolved_config(cfg)}, indent=2))
    tmp.replace(out / RUN_RECORD)
    save_hydra_record(cfg, out)
    return resume


#: Where a run keeps Hydra's record of itself (config.yaml, hydra.yaml, overrides.yaml), as Hydra would.
HYDRA_RECORD = ".hydra"


def save_hydra_record(cfg: DictConfig, out: Path | None = None) -> None:
    """Hydra's `.hydra/` record in `out` (default: Hydra's own output folder), written once the folder is claimed
    for this run; nothing outside a Hydra app. conf/hydra/default.yaml turns Hydra's own writing off
    (`output_subdir: null`): Hydra writes before the task starts, so a run refused for reusing another config's
    folder would already have replaced that run's record."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    folder = Path(out if out is not None else hydra_cfg.runtime.output_dir) / HYDRA_RECORD
    folder.mkdir(parents=True, exist_ok=True)
    records = {"config.yaml": cfg, "hydra.yaml": OmegaConf.create({"hydra": hydra_cfg}),
               "overrides.yaml": hydra_cfg.overrides.task}  # fmt: skip
    for name, node in records.items():
        tmp = folder / f"{name}.tmp"
        tmp.write_text(OmegaConf.to_yaml(node), encoding="utf-8")
        tmp.replace(folder / name)


def _versioned(cfg: DictConfig, key: str) -> DictConfig:
    """existing_folder=version: move this run to `<folder>/version_<n>`, the first that is free or already holds
    this config (so that the same command run again resumes or skips there instead of opening another)."""
    out = output_dir(cfg)
    n = 1
    while True:
        candidate = out / f"version_{n}"
        found = recorded_run(candidate)
        if (found is None and not candidate.exists()) or (found is not None and found.get("config_key") == key):
            break
        n += 1
    log.warning("run folder %s holds a run of another config: this run goes to %s (existing_folder=version)",
                out, candidate)  # fmt: skip
    with open_dict(cfg):
        cfg.paths.output_dir = str(candidate)
    return cfg


#: Where `anomaly_zoo.test` puts its results when pointed at a training run's folder: `<run>/test_<checkpoint>`.
EVALUATION_PREFIX = "test_"


def evaluation_folder(cfg: DictConfig, fit: bool) -> DictConfig:
    """Testing a checkpoint: `ckpt_path=last` becomes the run folder's newest checkpoint (an absolute path, so the
    same command finds its finished result again), and a test into the folder of a training run goes to
    `<folder>/test_<checkpoint name>`, kept apart from the training's own results (which it would otherwise be
    refused for, as another config)."""
    if fit or not cfg.get("ckpt_path"):
        return cfg
    out = output_dir(cfg)
    if cfg.ckpt_path == "last":
        newest = newest_checkpoint(out)
        if newest is None:
            raise CheckpointError(f"ckpt_path=last: no checkpoint in {out}")
        with open_dict(cfg):
            cfg.ckpt_path = str(newest.absolute())
    found = recorded_run(out)
    if found is not None and (found.get("config") or {}).get("task_name") == "train":
        evaluation = out / f"{EVALUATION_PREFIX}{Path(cfg.ckpt_path).stem}"
        print(f"{out} holds a training run: this evaluation goes to {evaluation}, the training's results stay")
        with open_dict(cfg):
            cfg.paths.output_dir = str(evaluation)
    return cfg


def evaluation_config(cfg: DictConfig, fit: bool) -> DictConfig:
    """A test of a checkpoint: its folder (evaluation_folder) and the model the checkpoint records (method, backbone,
    input size). Applying it again changes nothing, so run_job (for the finished-run check) and run may both call it."""
    cfg = evaluation_folder(cfg, fit)
    if cfg.get("ckpt_path") and not fit:
        cfg = adopt_if_readable(cfg)
    return cfg
