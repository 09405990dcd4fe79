"""`python -m anomaly_zoo.convert method=onenip|uniad ckpt_path=OFFICIAL output=NEW [dataset=...]`.

Turns a checkpoint of the official OneNIP/UniAD code into this framework's (weights renamed, every official key
consumed or reported) and completes it from the training images of `dataset` (what the official file lacks: the
test-time prompt pool and the calibrated score scale), so that `anomaly_zoo.test` / `anomaly_zoo.predict` take it
like any other. `anomaly_zoo.test ckpt_path=OFFICIAL` also works directly; it builds the same at test time.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, cast

import hydra
import torch
from omegaconf import DictConfig

from anomaly_zoo.checkpointing import METADATA_KEY
from anomaly_zoo.runner import instantiate_method, load_checkpoint_weights, model_metadata

if TYPE_CHECKING:
    from anomaly_zoo.methods.onenip.lightning_model import OneNIP

log = logging.getLogger(__name__)


def convert(cfg: DictConfig) -> Path:
    out = Path(cfg.output)
    if out.exists():
        raise FileExistsError(f"output={out} exists: choose another path (nothing is overwritten)")
    if not cfg.get("ckpt_path"):
        raise ValueError("ckpt_path=... (the official checkpoint to convert) is required")
    method = cast("OneNIP", instantiate_method(cfg))  # only OneNIP/UniAD import official checkpoints (checked below)
    load_checkpoint_weights(method, cfg.ckpt_path)
    imported = getattr(method, "official_import", None)
    if not imported:
        raise ValueError(f"ckpt_path={cfg.ckpt_path} is not an official OneNIP/UniAD checkpoint: nothing to convert")
    datamodule = hydra.utils.instantiate(cfg.dataset)
    datamodule.prepare_data()  # as a run does: generate or download the dataset where configured
    datamodule.setup("fit")
    if method.transformer.uses_prompt:
        method.complete_from_training_data(datamodule.training_data())
    checkpoint = {
        "state_dict": method.state_dict(),
        "hyper_parameters": dict(method.hparams),
        METADATA_KEY: model_metadata(cfg, datamodule),  # test/predict take method, backbone and size from it
    }
    method.on_save_checkpoint(checkpoint)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    torch.save(checkpoint, partial)
    os.replace(partial, out)  # atomic: a killed conversion leaves no half-written checkpoint under `output`
    unused = imported["unused_keys"]
    layers = ", ".join(sorted({".".join(k.split(".")[:2]) for k in unused})) or "none"
    print(f"{cfg.ckpt_path} ({imported['kind']}) → {out}; {len(unused)} official keys unused ({layers})")
    return out


@hydra.main(version_base="1.3", config_path="../conf", config_name="convert")
def main(cfg: DictConfig) -> None:
    convert(cfg)


if __name__ == "__main__":
    main()
