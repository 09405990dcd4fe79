"""Score a trained OneNIP checkpoint by each of its maps: S_rec alone, the refiner alone, and the fused map.

    python experiments/onenip_components.py CKPT [hydra overrides the run was trained with]
    python experiments/onenip_components.py outputs/train/<run>/checkpoints/last.ckpt experiment=onenip_demo

Same test split, image score (max of the average-pooled map) and metric suite as the run itself; prints mean
I-AUROC / P-AUROC / P-AP per map, and per category.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from anomaly_zoo.checkpoints.model import load_checkpoint_weights
from anomaly_zoo.methods.onenip.torch_model import reconstruction_error_map
from anomaly_zoo.metrics import compute_category_metrics
from anomaly_zoo.runner import instantiate_method

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


@torch.no_grad()
def component_maps(method, images: torch.Tensor, categories: list[str]) -> dict[str, torch.Tensor]:
    size = tuple(images.shape[-2:])
    feats = method.features(images)
    rec = method.reconstruct(feats, method._prompts_for_test(feats, categories), jitter=False)
    maps = {"S_rec": reconstruction_error_map(feats, rec, size), "fused": method.score_maps(feats, rec, size)}
    if method.refiner is not None:
        maps["refiner"] = torch.sigmoid(method.refine((rec - feats).abs(), size))
    return maps


def main(ckpt: str, overrides: list[str]) -> None:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="test", overrides=overrides)
    datamodule = instantiate(cfg.dataset)
    datamodule.setup("test")
    method = instantiate_method(cfg)
    load_checkpoint_weights(method, ckpt)
    method.eval()
    method.setup_test(datamodule.test_context())
    method.on_test_start()
    collected: dict[str, dict[str, list]] = {}
    labels, masks, categories = [], [], []
    for batch in datamodule.test_dataloader():
        maps = component_maps(method, batch["image"], list(batch["category"]))
        for name, m in maps.items():
            entry = collected.setdefault(name, {"scores": [], "maps": []})
            entry["scores"].append(method.image_scores(m))
            entry["maps"].append(m)
        labels.append(batch["label"])
        masks.append(batch["mask"].reshape(-1, *batch["image"].shape[-2:]) > 0.5)
        categories += list(batch["category"])
    labels_all, masks_all = torch.cat(labels), torch.cat(masks)
    for name, entry in collected.items():
        rows, mean = compute_category_metrics(
            torch.cat(entry["scores"]), labels_all, torch.cat(entry["maps"]), masks_all, categories
        )
        print(f"{name:8s} " + " / ".join(f"{k} {100 * mean[k]:.1f}" for k in ("I-AUROC", "P-AUROC", "P-AP")))
        print(
            "         "
            + "  ".join(
                f"{c} {100 * r['I-AUROC']:.0f}/{100 * r['P-AUROC']:.0f}/{100 * r['P-AP']:.0f}" for c, r in rows.items()
            )
        )


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2:])
