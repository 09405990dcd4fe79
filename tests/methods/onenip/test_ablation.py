"""OneNIP's components on the synthetic set (Table 4a's chain on the CPU demo schedule).

Trains four demo models once per module (24 min on 2 CPU cores): marked `slow` and `ablation` (make test-full).
Measured (2026-11-25, see the README): the refiner raises pixel AP by far; the prompt and the restoration stream
move it by less than one point at this schedule, so the full chain is a strict xfail until they do. Re-run under
the official defaults (loss, init, layout) on 2026-12-02: the same outcome, 21 min 22 s.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from anomaly_zoo.runner import run

CONF_DIR = str(Path(__file__).resolve().parents[3] / "conf")
ROWS = ("no_prompt", "dynamic", "dynamic_restoration", "full")  # each adds one component to the previous

pytestmark = [pytest.mark.slow, pytest.mark.ablation]


@pytest.fixture(scope="module")
def ablation_means(synthetic_root, tmp_path_factory) -> dict[str, dict[str, float]]:
    means = {}
    for row in ROWS:
        overrides = [
            f"dataset.root={synthetic_root}",
            "dataset.num_workers=0",
            "trainer.enable_progress_bar=false",
            "experiment=onenip_demo",
            f"+method/onenip/ablation={row}",
            "eval.heatmaps_per_category=0",
        ]
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose(config_name="train", overrides=overrides)
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path_factory.mktemp(row))
        means[row] = json.loads(Path(run(cfg, fit=True)["results_path"]).read_text())["mean"]
        print(row, {k: round(100 * v, 1) for k, v in means[row].items()})
    return means


def test_refiner_raises_pixel_ap(ablation_means):
    with_refiner, without = ablation_means["full"]["P-AP"], ablation_means["dynamic_restoration"]["P-AP"]
    assert with_refiner > without + 0.05, f"refiner: P-AP {without:.3f} -> {with_refiner:.3f}"


@pytest.mark.xfail(strict=True, reason="prompt and restoration change P-AP by < 1 point on the 80-epoch CPU schedule")
def test_prompt_restoration_and_refiner_each_raise_pixel_ap(ablation_means):
    pixel_ap = [ablation_means[row]["P-AP"] for row in ROWS]
    assert pixel_ap == sorted(pixel_ap), (
        f"P-AP should rise with each component: {dict(zip(ROWS, pixel_ap, strict=True))}"
    )
