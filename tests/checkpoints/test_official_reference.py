"""Reference test (issue 25): the official OneNIP `ModelHelper` (random weights), saved as the official code saves it
in both formats, then `anomaly_zoo.convert` → `anomaly_zoo.test` and `anomaly_zoo.predict`, against the official
validate() maths on the same images: fused = 0.5 S_rec + 0.5 c M̂ with c the mid-range of S_rec over the test set,
the image score the max of a 16x16 average pool, per-class AUROC/AP by utils/eval_helper.performances.

Runs when ANOMALY_ZOO_OFFICIAL_ONENIP points at a work tree of github.com/gaobb/OneNIP @ e93dec5 (imported from
there, never copied; `.cuda()` a no-op while it runs), skipped otherwise. The data: one category of the synthetic set
with ONE training image, so that the official test loader's prompt (a random training image of the class) and the
converted model's prompt pool are the same image.
"""

from __future__ import annotations

import json
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from anomaly_zoo.data import AnomalyDataModule
from anomaly_zoo.data.synthetic import MARKER
from tests.checkpoints.test_checkpoint_files import _EasyDict
from tests.conftest import CONF_DIR
from tests.methods.onenip import test_official_onenip as reference
from tests.methods.onenip.test_official_onenip import MEAN, ROOT, STD, official_model, randomise

official, backbone_state = reference.official, reference.backbone_state  # its fixtures, shared here

pytestmark = [
    pytest.mark.skipif(not ROOT, reason="set ANOMALY_ZOO_OFFICIAL_ONENIP to a work tree of github.com/gaobb/OneNIP"),
    pytest.mark.slow,
]
SIZE = 224
TOL = 1e-5
EVAL = ["experiment=onenip_official_eval", "dataset=synthetic", "dataset.categories=[logo]",
        f"dataset.image_size={SIZE}", "dataset.num_workers=0", "dataset.eval_batch_size=4"]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_root(synthetic_root, tmp_path_factory) -> Path:
    """`logo` with one training image and seven test images (three normal, one per defect type), masks kept."""
    root = tmp_path_factory.mktemp("reference") / "synthetic"
    shutil.copytree(synthetic_root / "logo", root / "logo")
    shutil.copy(synthetic_root / MARKER, root / MARKER)  # the generator's own copy: never regenerated
    for extra in sorted((root / "logo" / "train" / "good").glob("*.png"))[1:]:
        extra.unlink()
    for folder in sorted((root / "logo" / "test").iterdir()):
        for extra in sorted(folder.glob("*.png"))[3 if folder.name == "good" else 1 :]:
            extra.unlink()
            (root / "logo" / "ground_truth" / folder.name / f"{extra.stem}_mask.png").unlink(missing_ok=True)
    return root


@pytest.fixture(scope="module")
def official_net(official, backbone_state):
    model, cfg = official_model(official, "onenip_config.yaml", SIZE)
    model.backbone.load_state_dict(backbone_state)
    randomise(model.reconstruction, torch.Generator().manual_seed(11))
    return model.eval(), cfg


def save_official(model, cfg, path: Path, variant: str) -> None:
    """tools/train_val.py's save_checkpoint with the lines e93dec5 comments out ("full") or the state dict alone of
    the DDP-wrapped model ("state_dict"); easydict exists only while saving (reading must not need it)."""
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    if variant == "state_dict":
        torch.save(state, path)
        return
    saved = sys.modules.get("easydict")
    module = types.ModuleType("easydict")
    _EasyDict.__module__, _EasyDict.__qualname__ = "easydict", "EasyDict"
    module.EasyDict = _EasyDict  # type: ignore[attr-defined]
    sys.modules["easydict"] = module
    try:
        arch = _EasyDict({"net": list(cfg.net)}).net  # config.net: a list of EasyDict
        assert type(arch[2]) is _EasyDict and type(arch[2].kwargs) is _EasyDict
        optimizer = torch.optim.AdamW(model.reconstruction.parameters(), lr=1e-4, weight_decay=1e-4)
        torch.save({"epoch": 1000, "arch": arch, "state_dict": state, "best_metric": np.float64(97.5),
                    "optimizer": optimizer.state_dict()}, path)  # fmt: skip
    finally:
        if saved is None:
            sys.modules.pop("easydict", None)
        else:
            sys.modules["easydict"] = saved


def official_validate(model, cfg, tiny_root: Path):
    """validate()'s maths on the test images as the framework's datamodule reads them: per image path the official
    image score, and the official per-class metrics."""
    from utils.eval_helper import EvalImageMax, performances

    dm = AnomalyDataModule("synthetic", str(tiny_root), categories=["logo"], image_size=SIZE, num_workers=0)
    dm.setup()
    prompt = dm.train_dataset[0]["image"][None]
    items = [dm.test_dataset[i] for i in range(len(dm.test_dataset))]
    images = torch.stack([it["image"] for it in items])
    with torch.no_grad():
        out = model({"image": (images - MEAN) / STD, "prompt": ((prompt - MEAN) / STD).expand_as(images)})
    rec, ref = out["rec_pred"][:, 0].numpy(), out["ref_pred"][:, 0].numpy()
    fused = 0.5 * rec + (1 - 0.5) * (rec.max() + rec.min()) / 2 * ref  # tools/train_val.py, lamda 0.5
    masks = torch.stack([it["mask"] for it in items]).numpy()
    metrics = performances([{"clsname": "logo"}] * len(items), fused, masks.copy(), cfg.evaluator.metrics)
    scores = EvalImageMax.encode_pred(fused, avgpool_size=[16, 16])
    paths = [str(Path(it["path"]).relative_to(tiny_root)) for it in items]
    return dict(zip(paths, scores.tolist(), strict=True)), metrics


@pytest.mark.parametrize("variant", ["full", "state_dict"])
def test_official_model_converted_tested_and_predicted_equals_the_official_validate(
    variant, official_net, tiny_root, tmp_path
):
    from anomaly_zoo.convert import convert
    from anomaly_zoo.runner import predict, run

    model, cfg = official_net
    original = tmp_path / "ckpt.pkl"
    save_official(model, cfg, original, variant)
    converted = tmp_path / "converted.ckpt"

    def composed(name: str, overrides: list[str]):
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            c = compose(name, overrides=[f"dataset.root={tiny_root}", *overrides])
        with open_dict(c):
            c.paths.output_dir = str(tmp_path / name)
        return c

    convert(composed("convert", [*EVAL, f"ckpt_path={original}", f"output={converted}"]))
    original.unlink()  # the converted file stands alone
    tested_cfg = composed("test", [*EVAL, f"ckpt_path={converted}", "eval.heatmaps_per_category=0",
                                   "eval.bootstrap_resamples=0"])  # fmt: skip
    res = json.loads(Path(run(tested_cfg, fit=False)["results_path"]).read_text())
    folder = tmp_path / "images"
    folder.mkdir()
    for rel in res["images"]["path"]:
        shutil.copy(tiny_root / rel, folder / rel.replace("/", "__"))
    rows = predict(composed("predict", [f"ckpt_path={converted}", f"input={folder}", f"output={tmp_path / 'pred'}"]))

    expected, metrics = official_validate(model, cfg, tiny_root)
    assert len(expected) == 7 and np.ptp(list(expected.values())) > 0
    tested = dict(zip(res["images"]["path"], res["images"]["score"], strict=True))
    predicted = {Path(r.path).name.replace("__", "/"): r.score for r in rows}
    for name, ours in (("test", tested), ("predict", predicted)):
        assert ours.keys() == expected.keys(), name
        for path, value in expected.items():
            assert ours[path] == pytest.approx(value, rel=TOL), f"{name} {path}"
    ours_logo = res["categories"]["logo"]
    for key, theirs in (("I-AUROC", "logo_max_auc"), ("I-AP", "logo_max_ap"), ("P-AUROC", "logo_pixel_auc"),
                        ("P-AP", "logo_pixel_ap")):  # fmt: skip
        assert ours_logo[key] == pytest.approx(metrics[theirs] / 100, abs=TOL), key
