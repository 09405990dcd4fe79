"""Every file under conf/ composes and resolves; what can be built offline is built (datamodules, trainers,
callbacks, loggers, backbones and methods whose weights need no download). The options are found by walking the
folder, so a broken or misplaced yaml added later fails here without a test being written for it.

Also: the trainer's `_target_` is honoured, configured callbacks are instantiated, a method's trainer settings are
logged, and `debug=fast` ends after one step even for a method with its own epoch count.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from anomaly_zoo.trainer_setup import apply_method_trainer_arguments, instantiate_callbacks, instantiate_trainer
from anomaly_zoo.validation import _weight_sources
from tests.conftest import CONF_DIR

CONF = Path(CONF_DIR)
PRIMARY = ("train", "test", "predict", "convert")
#: Required by predict/convert (`???` in their files).
MANDATORY = {"predict": ["input=in", "output=out"], "convert": ["output=out.ckpt"]}
#: What an option leaves for the command line (`???`), or needs to be built.
OPTION_NEEDS = {("dataset", "folder"): ["dataset.root=/data/my_images"], ("method", "anomalib"): ["model=stfpm"],
                ("test_dataset", "folder"): ["test_dataset.root=/data/my_images"]}  # fmt: skip
#: Hydra plugins some options need; without them the option is skipped with the reason.
PLUGINS = {
    ("hydra/sweeper", "optuna_search"): ("hydra_plugins.hydra_optuna_sweeper", "hydra-optuna-sweeper (.[optuna])"),
    ("hydra/launcher", "slurm"): ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher (.[slurm])"),
}


def _options(conf: Path = CONF) -> list[tuple[str, str]]:
    """(group, option) of every yaml below conf/; `_`-prefixed files are shared parts, not options."""
    found = []
    for path in sorted(conf.rglob("*.yaml")):
        rel = path.relative_to(conf)
        if len(rel.parts) > 1 and not path.name.startswith("_"):
            found.append((rel.parent.as_posix(), path.stem))
    return found


OPTIONS = _options()


def _override(group: str, option: str) -> list[str]:
    parts = group.split("/")
    if group.startswith("hydra/") or len(parts) == 1:
        return [f"{group}={option}"]  # in the defaults list (hydra's own groups included)
    if parts[0] == "method" and len(parts) == 3:
        return [f"method={parts[1]}", f"+{group}={option}"]  # a method's own group, e.g. +method/onenip/ablation=full
    raise AssertionError(f"conf/{group}/{option}.yaml: no rule to compose this group; add one to tests/test_configs.py")


@pytest.fixture
def hydra_conf():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        yield


def _compose(name: str, overrides: list[str], tmp_path: Path, hydra: bool = True) -> DictConfig:
    """`hydra=False`: the job's config only, as a run sees it (cfg.hydra is Hydra's, not the job's)."""
    cfg = compose(config_name=name, overrides=[*MANDATORY.get(name, []), *overrides], return_hydra_config=hydra)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")  # Hydra's runtime folder, unset outside a run
    return cfg


def _resolved(cfg: DictConfig) -> dict:
    """The job config and Hydra's own (run/sweep folders, launcher, sweeper), every interpolation resolved."""
    job = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    resolved = OmegaConf.to_container(job, resolve=True, throw_on_missing=False)
    assert cfg.hydra.run.dir and cfg.hydra.sweep.dir  # resolved (hydra.sweep.subdir is set per job)
    for key in ("launcher", "sweeper", "callbacks"):
        OmegaConf.to_container(cfg.hydra[key], resolve=True)
    return resolved


def _offline(tree) -> bool:
    """No pretrained weights from the hub or a file (package or random weights only)."""
    return not _weight_sources(tree)


def _cpu_trainer_cfg(trainer: dict) -> dict:
    """A GPU preset checked on this machine: the same arguments on the CPU (at most 2 processes, not launched)."""
    trainer = dict(trainer)
    if trainer.get("accelerator") in ("gpu", "cuda") and not torch.cuda.is_available():
        trainer["accelerator"] = "cpu"
        trainer["devices"] = min(int(trainer.get("devices", 1)), 2)
        trainer.pop("precision", None)  # e.g. 16-mixed is GPU-only
        trainer.pop("sync_batchnorm", None)
    return trainer


def _build_parts(resolved: dict, parts: set[str], tmp_path: Path) -> None:
    for part in ("dataset", "test_dataset"):  # test_dataset=<name>: a second datamodule (cross-dataset runs)
        if part in parts:
            assert isinstance(instantiate(resolved[part]), pl.LightningDataModule)
    if "logger" in parts and resolved.get("logger"):
        assert instantiate(resolved["logger"]) is not None  # W&B: WANDB_MODE=disabled (conftest), nothing is sent
    if "callbacks" in parts:
        built = instantiate_callbacks(resolved.get("callbacks"), logger=True, trains=True, trainer_cfg={})
        assert len(built) == len([v for v in (resolved.get("callbacks") or {}).values() if v is not None])
    if "trainer" in parts:
        trainer = instantiate_trainer(_cpu_trainer_cfg(resolved["trainer"]), logger=False, callbacks=[],
                                      default_root_dir=str(tmp_path))  # fmt: skip
        assert isinstance(trainer, pl.Trainer)
    if "backbone" in parts and _offline(resolved["backbone"]) and "stable_diffusion" not in str(resolved["backbone"]):
        assert isinstance(instantiate(resolved["backbone"]), torch.nn.Module)
    if "method" in parts and _offline(resolved["method"]):
        from anomaly_zoo.runner import instantiate_method

        method_cfg = OmegaConf.create(resolved)
        for node in (method_cfg.method, method_cfg.method.get("backbone")):  # packaged weights: built once above
            if isinstance(node, DictConfig) and node.get("weights") == "package":
                node.weights = "random"
        instantiate_method(method_cfg)


def _parts(group: str) -> set[str]:
    top = group.split("/")[0]
    if top in ("experiment", "debug"):  # presets over several groups: build all but the method (built per method)
        return {"dataset", "trainer", "callbacks", "logger"}
    return {top} if top != "hydra" else set()


@pytest.mark.parametrize("name", PRIMARY)
def test_primary_config_composes_resolves_and_builds(hydra_conf, name, tmp_path):
    resolved = _resolved(_compose(name, [], tmp_path))
    assert resolved["task_name"] == name
    parts = {"dataset", "trainer", "callbacks", "logger"} | ({"backbone", "method"} if name == "train" else set())
    _build_parts(resolved, parts, tmp_path)  # test/predict/convert add keys to train's, not other objects


def _check_option(group: str, option: str, tmp_path: Path, conf: Path = CONF) -> None:
    """Compose `train` with the option, resolve it, build what it configures; a sweep: every swept option too."""
    overrides = [*_override(group, option), *OPTION_NEEDS.get((group, option), [])]
    cfg = _compose("train", overrides, tmp_path)
    resolved = _resolved(cfg)
    if group == "sweep":
        params = cfg.hydra.sweeper.params
        assert str(cfg.hydra.mode).endswith("MULTIRUN") and params
        for key, values in params.items():
            if (conf / key.lstrip("+")).is_dir():  # a swept group: each option, with the sweep's fixed choices
                fixed = [f"{k}={v}" for k, v in params.items() if k != key and "," not in str(v)]
                for value in str(values).split(","):
                    _resolved(_compose("train", [*overrides, *fixed, f"{key}={value}"], tmp_path))
        _resolved(_compose("test", overrides, tmp_path))  # sweeps run under test too (DIVAD's tables)
    _build_parts(resolved, _parts(group), tmp_path)


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}/{o}" for g, o in OPTIONS])
def test_every_option_composes_resolves_and_builds(hydra_conf, group, option, tmp_path):
    if (group, option) in PLUGINS:
        module, package = PLUGINS[(group, option)]
        if importlib.util.find_spec(module.split(".")[0]) is None or importlib.util.find_spec(module) is None:
            pytest.skip(f"needs the Hydra plugin {package}")
    _check_option(group, option, tmp_path)


def test_walk_finds_nested_groups_and_presets():
    groups = {g for g, _ in OPTIONS}
    assert {"method/onenip/ablation", "method/onenip/depth", "method/divad/mask", "method/divad/prompt"} <= groups
    assert {"experiment", "sweep", "callbacks", "debug", "hydra/launcher", "hydra/sweeper"} <= groups
    assert ("dataset", "_common") not in OPTIONS


BROKEN = {
    "interpolation": ("trainer", "defaults:\n  - cpu\nmax_epochs: ${no_such_key}\n", "no_such_key"),
    "yaml syntax": ("logger", "_target_: lightning.pytorch.loggers.CSVLogger\n  save_dir: [\n", "broken.yaml"),
    "missing default": ("dataset", "defaults:\n  - no_such_dataset\n", "no_such_dataset"),
    "unknown class": ("callbacks", "x:\n  _target_: lightning.pytorch.callbacks.NoSuchCallback\n", "NoSuchCallback"),
    "misplaced group": ("method/onenip/ablation/deeper", "decoder: dynamic\n", "no rule to compose"),
}


@pytest.mark.parametrize("case", BROKEN)
def test_a_broken_yaml_added_to_conf_fails_the_walk(case, tmp_path):
    """A copy of conf/ with one broken file added: the walk finds it and its check fails."""
    import shutil

    group, text, message = BROKEN[case]
    copy = tmp_path / "conf"
    shutil.copytree(CONF, copy)
    (copy / group).mkdir(parents=True, exist_ok=True)
    (copy / group / "broken.yaml").write_text(text)
    assert (group, "broken") in _options(copy)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(copy), version_base="1.3"), pytest.raises(Exception, match=message):
        _check_option(group, "broken", tmp_path, conf=copy)


# ---------------------------------------------------------------- trainer and callbacks from the config


class RecordingTrainer(pl.Trainer):
    """A Trainer subclass named by `trainer._target_`."""


def _tiny_method(max_epochs: int = 7):
    from tests.helpers.tiny_trainable import TinyAutoencoder

    return TinyAutoencoder(max_epochs=max_epochs)


def test_trainer_target_and_callbacks_come_from_the_config(hydra_conf, tmp_path, caplog):
    from lightning.pytorch.callbacks import LearningRateMonitor

    from anomaly_zoo.runner import build_trainer

    overrides = [f"trainer._target_={__name__}.RecordingTrainer", "trainer.max_epochs=2"]
    cfg = _compose("train", overrides, tmp_path, hydra=False)
    with caplog.at_level(logging.INFO, logger="anomaly_zoo.trainer_setup"):
        trainer = build_trainer(cfg, _tiny_method(max_epochs=7), tmp_path, [])
    assert isinstance(trainer, RecordingTrainer) and trainer.max_epochs == 7  # the method's value wins ...
    assert "method patch_knn sets trainer.max_epochs=7 (config: 2)" in caplog.text  # ... and says so
    assert any(r.levelno == logging.WARNING and "max_epochs" in r.getMessage() for r in caplog.records)
    assert "trainer.num_sanity_val_steps=0 (config: unset)" in caplog.text
    assert any(isinstance(c, LearningRateMonitor) for c in trainer.callbacks)  # from conf/callbacks/default.yaml
    assert trainer.default_root_dir == str(tmp_path)

    for no_callbacks in (["callbacks=none"], ["~callbacks"]):
        trainer = build_trainer(_compose("train", no_callbacks, tmp_path, hydra=False), _tiny_method(), tmp_path, [])
        assert not any(isinstance(c, LearningRateMonitor) for c in trainer.callbacks)
    # without a logger the learning-rate monitor cannot work: left out, not an error
    trainer = build_trainer(_compose("train", ["~logger"], tmp_path, hydra=False), _tiny_method(), tmp_path, [])
    assert not any(isinstance(c, LearningRateMonitor) for c in trainer.callbacks)


def test_configured_callbacks_and_trainer_errors(hydra_conf, tmp_path):
    from lightning.pytorch.callbacks import EarlyStopping, RichProgressBar

    cfg = _compose("train", ["+callbacks.stop._target_=lightning.pytorch.callbacks.EarlyStopping",
                             "+callbacks.stop.monitor=val/loss", "callbacks.lr_monitor=null"], tmp_path)  # fmt: skip
    built = instantiate_callbacks(OmegaConf.to_container(cfg.callbacks), logger=True, trains=True, trainer_cfg={})
    assert [type(c) for c in built] == [EarlyStopping]
    rich = OmegaConf.to_container(_compose("train", ["callbacks=rich"], tmp_path).callbacks)
    kept = instantiate_callbacks(rich, logger=True, trains=True, trainer_cfg={"enable_progress_bar": False})
    assert not any(isinstance(c, RichProgressBar) for c in kept)  # would be a Lightning error with the bar off
    with pytest.raises(TypeError, match="not a Lightning Callback"):
        instantiate_callbacks({"x": {"_target_": "builtins.dict"}}, logger=True, trains=True, trainer_cfg={})
    with pytest.raises(ValueError, match=r"callbacks\.x: needs a _target_"):
        instantiate_callbacks({"x": {"monitor": "val/loss"}}, logger=True, trains=True, trainer_cfg={})
    with pytest.raises(TypeError, match="not a Lightning Trainer"):
        instantiate_trainer({"_target_": "builtins.dict"}, logger=False, callbacks=[], default_root_dir=".")
    with pytest.raises(ValueError, match=r"trainer\.callbacks: set by the run"):
        instantiate_trainer({"callbacks": []}, logger=False, default_root_dir=".")


def test_method_trainer_settings_equal_to_the_config_are_not_logged(caplog):
    trainer_cfg = {"max_epochs": 1, "limit_val_batches": None}
    with caplog.at_level(logging.INFO, logger="anomaly_zoo.trainer_setup"):
        apply_method_trainer_arguments(trainer_cfg, {"max_epochs": 1, "gradient_clip_val": None}, "m")
        assert not caplog.records
        apply_method_trainer_arguments(trainer_cfg, {"limit_val_batches": 0}, "m")
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.INFO, "method m sets trainer.limit_val_batches=0 (config: None)")
    ]
    assert trainer_cfg == {"max_epochs": 1, "limit_val_batches": 0}


def test_monitoring_callbacks_do_not_change_the_config_key():
    from anomaly_zoo.config_keys import config_key

    base = {"task_name": "train", "method": {"bank_size": 1}}
    lr = {"lr_monitor": {"_target_": "lightning.pytorch.callbacks.LearningRateMonitor", "logging_interval": "epoch"}}
    stop = {"stop": {"_target_": "lightning.pytorch.callbacks.EarlyStopping", "monitor": "val/loss"}}
    assert config_key(base) == config_key({**base, "callbacks": lr}) == config_key({**base, "callbacks": {}})
    assert config_key(base) != config_key({**base, "callbacks": {**lr, **stop}})  # early stopping changes results
    assert config_key({**base, "debug": False}) == config_key({**base, "full_traceback": True})


# ---------------------------------------------------------------- debug presets


def test_debug_fast_ends_after_one_step_even_when_the_method_sets_its_epochs(hydra_conf, tmp_path):
    from anomaly_zoo.runner import build_trainer, instantiate_method

    cfg = _compose("train", ["debug=fast", "method=onenip"], tmp_path)
    assert cfg.full_traceback and cfg.get("logger") is None and cfg.eval.heatmaps_per_category == 0
    assert "/debug/" in cfg.hydra.run.dir
    trainer = build_trainer(cfg, instantiate_method(cfg), tmp_path, [])
    assert trainer.max_epochs == 1000  # OneNIP's method.max_epochs wins over trainer.max_epochs ...
    assert trainer.max_steps == 1  # ... but fitting stops after one optimizer step
    assert (trainer.limit_train_batches, trainer.limit_val_batches, trainer.limit_test_batches) == (1, 1, 1)


def test_debug_fast_runs_one_step_and_scores_one_test_batch(compose_cfg):
    from anomaly_zoo.checkpoints.read import read_checkpoint
    from anomaly_zoo.runner import run

    tiny = ["~method", "+method._target_=tests.helpers.tiny_trainable.TinyAutoencoder", "+method.name=tiny"]
    cfg = compose_cfg("train", ["debug=fast", *tiny, "+method.max_epochs=50", "dataset.image_size=64",
                                "dataset.eval_batch_size=8"])  # fmt: skip
    out = run(cfg, fit=True)
    state = read_checkpoint(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt")
    assert state["global_step"] == 1 and state["epoch"] == 0
    assert out["mean"]  # metrics of the one scored test batch (a warning says they are partial)


def test_debug_traceback_and_full_traceback_show_tracebacks(hydra_conf, tmp_path, monkeypatch):
    from anomaly_zoo.errors import traceback_requested

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    assert not traceback_requested(_compose("train", [], tmp_path))
    assert traceback_requested(_compose("train", ["debug=traceback"], tmp_path))
    assert traceback_requested(_compose("train", ["full_traceback=true"], tmp_path))
    assert traceback_requested(_compose("train", ["debug=[fast,traceback]"], tmp_path))
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    assert traceback_requested(_compose("train", [], tmp_path))
    assert os.environ["HYDRA_FULL_ERROR"] == "1"
