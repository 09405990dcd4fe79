"""Evaluation protocols: the official evaluations' flip, mask-derived labels and DIVAD's binned PRO.

Always on: hand-computed cases and a brute-force PRO written from the description of DIVAD's `compute_pro`.
Reference tests (skipped naming the variable when unset): the official `eval_helper.py` of each repository, imported
from its work tree, run on the same maps:

    ANOMALY_ZOO_OFFICIAL_ONENIP=/path/to/OneNIP ANOMALY_ZOO_OFFICIAL_DIVAD=/path/to/DIVAD \\
        .venv/bin/python -m pytest tests/metrics/test_protocols.py
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from anomaly_zoo.metrics import METRIC_NAMES, compute_category_metrics, compute_metrics
from anomaly_zoo.metrics.protocols import PROTOCOLS, flipped, get_protocol

ONENIP = os.environ.get("ANOMALY_ZOO_OFFICIAL_ONENIP")
DIVAD = os.environ.get("ANOMALY_ZOO_OFFICIAL_DIVAD")


def maps_case(seed: int, n: int = 12, size: int = 32, tail: float = 1.0):
    """Random maps with blob defects on half the images; `tail` > 1 makes the maps long-tailed (values cubed)."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), dtype=np.uint8)
    for i in range(n // 2, n):
        for _ in range(rng.integers(1, 3)):
            y, x, r = rng.integers(4, size - 4), rng.integers(4, size - 4), rng.integers(2, 5)
            yy, xx = np.ogrid[:size, :size]
            masks[i][(yy - y) ** 2 + (xx - x) ** 2 <= r * r] = 1
    maps = rng.random((n, size, size)) + 0.6 * masks * rng.random((n, size, size))
    maps = (maps**tail).astype(np.float32)
    return maps, masks


def pooled_max(maps: np.ndarray, kernel: int = 8, repeats: int = 1) -> np.ndarray:
    x = torch.from_numpy(maps.astype(np.float64))[:, None]
    for _ in range(repeats):
        x = F.avg_pool2d(x, kernel, stride=1)
    return x.flatten(1).amax(1).numpy()


# ------------------------------------------------------------------------------------------------ always on
def test_an_unknown_protocol_lists_the_valid_ones():
    maps, masks = maps_case(0)
    with pytest.raises(ValueError, match=r"evaluation.protocol='official'.*exact, onenip_official, divad_official"):
        compute_metrics(pooled_max(maps), masks.any((1, 2)), maps, masks, protocol="official")
    with pytest.raises(ValueError, match="valid: exact"):
        compute_category_metrics(pooled_max(maps), masks.any((1, 2)), maps, masks, ["a"] * 12, protocol="x")


@pytest.mark.filterwarnings("ignore:metrics \\['PRO'\\] are undefined")  # two-valued maps: PRO's crossing is degenerate
def test_the_flip_by_hand():
    # 4 images: scores rank the defects below the normals: AUROC 0.25 (1 of 4 pairs right), flipped 0.75.
    scores, labels = np.array([0.9, 0.3, 0.2, 0.4]), np.array([0, 0, 1, 1])
    masks = np.zeros((4, 4, 4), dtype=np.uint8)
    masks[2:, 1:3, 1:3] = 1
    maps = np.where(masks == 1, 0.0, 1.0).astype(np.float32)  # defect pixels lowest: pixel AUROC 0
    exact = compute_metrics(scores, labels, maps, masks)
    assert exact["I-AUROC"] == pytest.approx(0.25) and exact["P-AUROC"] == pytest.approx(0.0)
    for name in ("onenip_official", "divad_official"):
        official = compute_metrics(scores, labels, maps, masks, protocol=name)
        assert official["I-AUROC"] == pytest.approx(0.75) and official["P-AUROC"] == pytest.approx(1.0)
        assert official["I-AP"] == exact["I-AP"] and official["P-AP"] == exact["P-AP"]  # AP is never flipped
    assert flipped(0.5) == 0.5 and flipped(0.7) == 0.7 and math.isnan(flipped(math.nan))


def test_official_protocols_take_image_labels_from_the_masks():
    maps, masks = maps_case(1)
    labels = masks.any((1, 2)).astype(int)
    labels_wrong = labels.copy()
    labels_wrong[0] = 1  # a "defective" image with an empty mask
    scores = pooled_max(maps)
    with pytest.warns(UserWarning, match="labels are taken from the masks.*1 image"):
        official = compute_metrics(scores, labels_wrong, maps, masks, protocol="onenip_official")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert official == compute_metrics(scores, labels, maps, masks, protocol="onenip_official")


def _pro_brute_force(maps: np.ndarray, masks: np.ndarray, num_th: int = 200) -> float:
    """DIVAD's PRO as its description reads (issue 24), independently of the suite: threshold the maps at each of
    `num_th` evenly spaced values in [min, max), mean region overlap, FPR over all normal pixels, keep FPR < 0.3,
    divide FPR by its largest kept value, trapezoidal area along the thresholds."""
    maps = maps.astype(np.float64)
    lo, hi = maps.min(), maps.max()
    regions = []
    for i, mask in enumerate(masks):
        labelled, n = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [(i, labelled == k) for k in range(1, n + 1)]
    normal = masks == 0
    points = []
    for th in np.arange(lo, hi, (hi - lo) / num_th):
        above = maps > th
        pro = np.mean([above[i][region].sum() / region.sum() for i, region in regions])
        points.append(((above & normal).sum() / normal.sum(), pro))
    fpr, pro = np.array([p for p in points if p[0] < 0.3]).T
    fpr = fpr / fpr.max()
    # trapezoids along the curve in threshold order (FPR falls; points of equal FPR stay in that order)
    return float(np.sum(-np.diff(fpr) * (pro[1:] + pro[:-1]) / 2))


@pytest.mark.parametrize("tail", [1.0, 3.0, 12.0])
def test_divad_pro_equals_its_description_and_differs_from_the_exact_pro_on_long_tails(tail):
    maps, masks = maps_case(2, tail=tail)
    scores, labels = pooled_max(maps), masks.any((1, 2))
    official = compute_metrics(scores, labels, maps, masks, protocol="divad_official")["PRO"]
    assert official == pytest.approx(_pro_brute_force(maps, masks), abs=1e-9)
    if tail == 12.0:  # a coarse grid over a long tail: the binned PRO is visibly not the exact one
        assert abs(official - compute_metrics(scores, labels, maps, masks)["PRO"]) > 0.01


def test_divad_pro_by_hand():
    # One 1x4 image, pixels [0, 1, 2, 3], the last two a region: with 2 thresholds the grid is [0, 1.5];
    # th=0: FPR 1/2 (dropped, >= 0.3), th=1.5: FPR 0, PRO 1 → fewer than 2 points kept: undefined (NaN).
    maps = np.array([[[0.0, 1.0, 2.0, 3.0]]], dtype=np.float32)
    masks = np.array([[[0, 0, 1, 1]]], dtype=np.uint8)
    from anomaly_zoo.metrics.pixel_ranks import rank_pixels as _rank_pixels
    from anomaly_zoo.metrics.protocols import binned_pro

    pixel, weights = _rank_pixels(maps, masks)
    assert math.isnan(binned_pro(pixel, weights, num_th=2))
    # Four normal pixels [0, 1, 2, 3] then the region [2.5, 4]: grid 0, 1, 2, 3 (num_th 4).
    # th: FPR, PRO = 0: 3/4, 1 | 1: 2/4, 1 | 2: 1/4, 1 | 3: 0, 1/2. Kept (FPR < 0.3): (1/4, 1), (0, 1/2);
    # FPR / (1/4) → (1, 1), (0, 1/2): area (1 + 1/2) / 2 = 0.75.
    maps = np.array([[[0.0, 1.0, 2.0, 3.0, 2.5, 4.0]]], dtype=np.float32)
    masks = np.array([[[0, 0, 0, 0, 1, 1]]], dtype=np.uint8)
    pixel, weights = _rank_pixels(maps, masks)
    assert binned_pro(pixel, weights, num_th=4) == pytest.approx(0.75)


def test_protocol_records_say_what_differs():
    assert get_protocol("exact").record()["exact_only"] == []
    assert get_protocol("onenip_official").record()["exact_only"] == ["I-F1max", "P-F1max", "PRO"]
    assert get_protocol("divad_official").record()["pro"] == "binned (200 thresholds)"
    assert set(PROTOCOLS) == {"exact", "onenip_official", "divad_official"}


# ------------------------------------------------------------------------------------------------ official code
class _Config(dict):
    """The EasyDict-like config `performances` reads (`config.get("auc")` and `config.auc`)."""

    __getattr__ = dict.__getitem__


def _official_eval_helper(root: str, monkeypatch) -> types.ModuleType:
    """`eval_helper.py` of an official work tree, imported from there (tabulate only prints tables: stubbed)."""
    path = Path(root).expanduser() / ("utils/eval_helper.py" if root == ONENIP else "eval_helper.py")
    if "tabulate" not in sys.modules:
        monkeypatch.setitem(sys.modules, "tabulate", types.ModuleType("tabulate"))
    spec = importlib.util.spec_from_file_location(f"official_eval_helper_{abs(hash(root))}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)  # the official code calls .cuda()
    return module


def _classes():
    """Three classes: an ordinary one, one whose maps rank defects low (AUROC < 0.5: flipped), a long-tailed one
    (a coarse 200-threshold grid)."""
    ordinary, inverted, tailed = maps_case(3, size=64), maps_case(4, size=64), maps_case(5, size=64, tail=12.0)
    inverted = (-inverted[0] + 2.0, inverted[1])
    return {"ordinary": ordinary, "inverted": inverted, "tailed": tailed}


@pytest.mark.skipif(not ONENIP, reason="set ANOMALY_ZOO_OFFICIAL_ONENIP to a work tree of github.com/gaobb/OneNIP")
def test_onenip_official_protocol_equals_the_official_eval_helper(monkeypatch):
    official = _official_eval_helper(str(ONENIP), monkeypatch)
    classes = _classes()
    fileinfos, preds, masks, names = [], [], [], []
    for name, (m, k) in classes.items():
        for _ in range(len(m)):
            fileinfos.append({"clsname": name})
            names.append(name)
        preds.append(m)
        masks.append(k)
    preds_all, masks_all = np.concatenate(preds), np.concatenate(masks)
    config = _Config(auc=[{"name": "max", "kwargs": {"avgpool_size": 16}}, {"name": "pixel"}])
    theirs = official.performances(fileinfos, preds_all.copy(), masks_all.copy(), config)
    scores = pooled_max(preds_all, kernel=16)
    per_cat, mean = compute_category_metrics(
        scores, masks_all.any((1, 2)), preds_all, masks_all, names, protocol="onenip_official"
    )
    assert (
        theirs["inverted_pixel_auc"] > 50
        and compute_metrics(  # the flip is exercised
            scores[12:24], masks_all[12:24].any((1, 2)), preds_all[12:24], masks_all[12:24]
        )["P-AUROC"]
        < 0.5
    )
    pairs = {"max_auc": "I-AUROC", "max_ap": "I-AP", "pixel_auc": "P-AUROC", "pixel_ap": "P-AP"}
    for name in [*classes, "mean"]:
        ours = mean if name == "mean" else per_cat[name]
        for key, metric in pairs.items():
            assert ours[metric] * 100 == pytest.approx(theirs[f"{name}_{key}"], abs=1e-4), (name, metric)


@pytest.mark.skipif(not DIVAD, reason="set ANOMALY_ZOO_OFFICIAL_DIVAD to a work tree of github.com/giddyyupp/DIVAD")
def test_divad_official_protocol_equals_the_official_eval_helper(monkeypatch):
    official = _official_eval_helper(str(DIVAD), monkeypatch)
    classes = _classes()
    fileinfos, preds, masks, names = [], [], [], []
    for name, (m, k) in classes.items():
        for i in range(len(m)):
            fileinfos.append({"filename": f"{name}_{i}", "clsname": name})
            # test.py's maps are float64 (scipy's blur of a float64 map), its masks float tensors
            preds.append(torch.from_numpy(m[i].astype(np.float64)))
            masks.append(torch.from_numpy(k[i].astype(np.float32)))
            names.append(name)
    evaluations = ["max", "pixel", "pro", "appx", "apsp", "f1px", "f1sp"]
    theirs = official.performances(fileinfos, preds, masks, {"auc": [{"name": n} for n in evaluations]})
    maps_all = np.stack([p.numpy() for p in preds]).astype(np.float32)
    masks_all = np.stack([k.numpy() for k in masks]).astype(np.uint8)
    scores = pooled_max(maps_all, kernel=8, repeats=8)
    per_cat, mean = compute_category_metrics(
        scores, masks_all.any((1, 2)), maps_all, masks_all, names, protocol="divad_official"
    )
    pairs = {"max": "I-AUROC", "pixel": "P-AUROC", "pro": "PRO", "appx": "P-AP", "apsp": "I-AP", "f1px": "P-F1max",
             "f1sp": "I-F1max"}  # fmt: skip
    assert set(pairs.values()) == set(METRIC_NAMES)
    for name in [*classes, "mean"]:
        ours = mean if name == "mean" else per_cat[name]
        for key, metric in pairs.items():
            assert ours[metric] == pytest.approx(theirs[f"{name}_{key}_auc"], abs=1e-6), (name, metric)
    exact = compute_category_metrics(scores, masks_all.any((1, 2)), maps_all, masks_all, names)[0]
    assert abs(exact["tailed"]["PRO"] - per_cat["tailed"]["PRO"]) > 0.01  # the binned PRO really differs there
