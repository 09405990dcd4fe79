"""Shared fixtures: one generated synthetic dataset per session, Hydra configs composed on tiny settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    from anomaly_zoo.data.synthetic import ensure_synthetic_dataset

    return ensure_synthetic_dataset(tmp_path_factory.mktemp("data") / "synthetic", seed=0)


@pytest.fixture
def compose_cfg(synthetic_root, tmp_path):
    """compose_cfg(config_name, overrides) → a resolved-able DictConfig writing into tmp_path."""

    def _compose(config_name: str = "train", overrides: list[str] | None = None) -> DictConfig:
        base = [
            f"dataset.root={synthetic_root}",
            "dataset.num_workers=0",
            "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false",
        ]
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=base + (overrides or []))
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / "run")
        return cfg

    return _compose
