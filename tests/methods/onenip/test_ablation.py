"""Each OneNIP component raises pixel AP on the synthetic set (Table 4a's chain on the CPU demo schedule).

Trains four demo models (~4 x the demo's time on 2 CPU cores), so it runs only with ANOMALY_ZOO_SLOW=1.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from omegaconf import open_dict

from anomaly_zoo.runner import run

ROWS = ("no_prompt", "dynamic", "dynamic_restoration", "full")  # each adds one component to the previous


@pytest.mark.skipif(not os.environ.get("ANOMALY_ZOO_SLOW"), reason="trains four OneNIP demo models; ANOMALY_ZOO_SLOW=1")
def test_prompt_restoration_and_refiner_each_raise_pixel_ap(compose_cfg, tmp_path):
    pixel_ap = {}
    for row in ROWS:
        cfg = compose_cfg(
            "train", ["experiment=onenip_demo", f"+onenip_ablation={row}", "eval.heatmaps_per_category=0"]
        )
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / row)
        pixel_ap[row] = json.loads(Path(run(cfg, fit=True)["results_path"]).read_text())["mean"]["P-AP"]
    print(pixel_ap)
    assert [pixel_ap[r] for r in ROWS] == sorted(pixel_ap.values()), f"P-AP should rise with each component: {pixel_ap}"
