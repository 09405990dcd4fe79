"""Cross-dataset runs (the zero-shot transfer protocol): fit on `dataset` (one dataset, or a union), test on
`test_dataset=<name>`, a second datamodule whose training split is never read. Also the refusal to score a test split
that has no ground truth (MVTec AD 2's private splits: prediction only).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import hydra
from omegaconf import DictConfig


def test_datamodule(cfg: DictConfig, method: Any, datamodule: Any) -> Any:
    """The datamodule the run tests on: `test_dataset` where the config names one, else the fitted one."""
    if cfg.get("test_dataset") is None:
        return datamodule
    make = hydra.utils.instantiate(cfg.test_dataset, _partial_=True)
    # zero-shot transfer: the target's training images stay unread (and need not exist)
    return make(use_train_split=False, views=method.input_views())


def require_ground_truth(cfg: DictConfig, datamodule: Any) -> None:
    """Metrics need ground truth: a split published without it is for prediction only (one line, with the command)."""
    if getattr(datamodule, "ground_truth", True):
        return
    key = "test_dataset" if cfg.get("test_dataset") is not None else "dataset"
    split = datamodule.options.get("test_split")
    category = datamodule.categories[0] if datamodule.categories else "<category>"
    raise ValueError(
        f"{key}.test_split={split} is for prediction only: dataset={datamodule.name} publishes no ground truth for "
        f"it, so there are no metrics to compute. Predict it instead: python -m anomaly_zoo.predict "
        f"method=<method> ckpt_path=<checkpoint> input={datamodule.root}/{category}/{split} output=<folder> "
        f"submission={datamodule.name}"
    )


def test_context(datamodule: Any, test_dm: Any) -> Any:
    """The test-time context of the tested datamodule, with the fitted one's training split (what the method learnt
    from) where the two differ."""
    context = test_dm.test_context()
    if test_dm is datamodule or not datamodule.use_train_split or datamodule.train_dataset is None:
        return context
    return dataclasses.replace(context, training=datamodule.training_data())


def dataset_record(cfg: DictConfig, datamodule: Any, test_dm: Any) -> tuple[str, dict[str, Any]]:
    """results.json's `dataset` and what it adds: a cross-dataset run is named `<train>-><test>` (so that
    leaderboards never put it beside in-domain runs) and records both datasets with their categories."""
    extra: dict[str, Any] = {"pixel_metrics": getattr(test_dm, "pixel_metrics", "all")}
    if test_dm is datamodule:
        return str(cfg.dataset.name), extra
    extra["cross_dataset"] = {
        "train": {"dataset": str(cfg.dataset.name), "categories": list(datamodule.categories)},
        "test": {"dataset": str(cfg.test_dataset.name), "categories": list(test_dm.categories)},
    }
    return f"{cfg.dataset.name}->{cfg.test_dataset.name}", extra
