"""`python -m anomaly_zoo.convert ckpt_path=OFFICIAL output=NEW [method=uniad] [dataset=...]`.

Turns a checkpoint of the official OneNIP/UniAD code (either save format) into this framework's (weights renamed,
every official key consumed or reported) and completes it from the training images of `dataset` (what the official
file lacks: the test-time prompt pool and, with score_scaling=calibrated, the score scale), so that
`anomaly_zoo.test` / `anomaly_zoo.predict` take it like any other. The new file stands alone: it holds the backbone
too and records `backbone.weights=checkpoint`, never the path it came from. `anomaly_zoo.test ckpt_path=OFFICIAL`
also works directly; it builds the same at test time.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, cast

import hydra
from omegaconf import DictConfig

from anomaly_zoo.checkpoints.model import (
    adopt_checkpoint_model,
    load_checkpoint_weights,
    model_metadata,
    save_atomically,
)
from anomaly_zoo.checkpoints.official import official_kind
from anomaly_zoo.checkpoints.read import METADATA_KEY, read_checkpoint
from anomaly_zoo.errors import clear_messages
from anomaly_zoo.runner import instantiate_method

if TYPE_CHECKING:
    from anomaly_zoo.methods.onenip.lightning_model import OneNIP


def convert(cfg: DictConfig) -> Path:
    out = Path(cfg.output)
    if out.exists():
        raise FileExistsError(f"output={out} exists: choose another path (nothing is overwritten)")
    if not cfg.get("ckpt_path"):
        raise ValueError("ckpt_path=... (the official checkpoint to convert) is required")
    state = read_checkpoint(cfg.ckpt_path)
    if official_kind(state["state_dict"]) is None:
        raise ValueError(f"ckpt_path={cfg.ckpt_path} is not an official OneNIP/UniAD checkpoint (no "
                         "'module.reconstruction.*' keys): nothing to convert")  # fmt: skip
    cfg = adopt_checkpoint_model(cfg, state)  # the backbone's weights come from the official file
    method = cast("OneNIP", instantiate_method(cfg))
    load_checkpoint_weights(method, cfg.ckpt_path)
    imported = method.official_import
    assert imported is not None  # set by loading an official file
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
    save_atomically(checkpoint, out)
    unused = imported["unused_keys"]
    layers = ", ".join(sorted({".".join(k.split(".")[:2]) for k in unused})) or "none"
    print(f"{cfg.ckpt_path} ({imported['kind']}) → {out}; {len(unused)} official keys unused ({layers})")
    return out


@hydra.main(version_base="1.3", config_path="../conf", config_name="convert")
@clear_messages
def main(cfg: DictConfig) -> None:
    convert(cfg)


if __name__ == "__main__":
    main()
