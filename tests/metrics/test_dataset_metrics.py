"""Issue 26's dataset metrics against hand-computed cases and independent brute-force references: AU-PRO at another
integration limit, SegF1 at a validation threshold, sample-level scores (Real-IAD) and sPRO (MVTec LOCO)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from anomaly_zoo.metrics import compute_category_metrics, compute_metrics
from anomaly_zoo.metrics.samples import sample_metrics, sample_scores
from anomaly_zoo.metrics.segf1 import ThresholdRule, segf1, validation_threshold
from anomaly_zoo.metrics.spro import (
    DefectType,
    GroundTruthChannel,
    au_spro,
    channel_from_array,
    mean_spro_at,
    read_defects_config,
    read_gt_channels,
)


def area_up_to(points: list[tuple[float, float]], limit: float) -> float:
    """Trapezoids over (fpr, y) points sorted by fpr, the last one cut at `limit` by linear interpolation; / limit."""
    xs = np.array([p[0] for p in points])
    ys = np.array([p[1] for p in points])
    keep = xs <= limit
    x_in, y_in = list(xs[keep]), list(ys[keep])
    if not keep.all():  # the first point past the limit: interpolate between it and the last one before
        j = int(np.argmax(~keep))
        x_in.append(limit)
        y_in.append(ys[j - 1] + (ys[j] - ys[j - 1]) * (limit - xs[j - 1]) / (xs[j] - xs[j - 1]))
    return float(np.trapezoid(y_in, x_in)) / limit


def brute_pro(maps: np.ndarray, masks: np.ndarray, limit: float) -> float:
    """From the definition: at every threshold, the overlap of each 8-connected region averaged over regions, FPR
    over the normal pixels; the threshold sweeps from above the maximum down through every distinct value."""
    regions = []
    for i, mask in enumerate(masks):
        labelled, n = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [(i, labelled == r) for r in range(1, n + 1)]
    normal = ~masks.astype(bool)
    points = [(0.0, 0.0)]
    for t in sorted(set(maps.ravel().tolist()), reverse=True):
        hit = maps >= t
        points.append((hit[normal].sum() / normal.sum(), np.mean([hit[i][r].sum() / r.sum() for i, r in regions])))
    return area_up_to(points, limit)


def small_maps(seed: int, levels: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    masks = np.zeros((4, 9, 9), dtype=np.uint8)
    masks[2, 1:4, 1:3] = 1
    masks[2, 6:8, 5:9] = 1
    masks[3, 3:6, 3:6] = 1
    maps = (rng.random(masks.shape) + 0.6 * masks * rng.random(masks.shape)).astype(np.float32)
    if levels:
        maps = (np.floor(maps * levels) / levels).astype(np.float32)
    labels = masks.reshape(4, -1).any(1).astype(int)
    return maps.reshape(4, -1).max(1), labels, maps, masks


# --- AU-PRO with an integration limit ----------------------------------------------------------------------------


def test_pro_limit_default_is_bit_identical_and_extra_limits_come_from_the_same_sort():
    scores, labels, maps, masks = small_maps(0)
    default = compute_metrics(scores, labels, maps, masks)
    explicit = compute_metrics(scores, labels, maps, masks, pro_fpr_limit=0.3, extra_pro_limits=(0.05, 0.3))
    assert explicit["PRO"] == default["PRO"]  # bit-identical
    assert explicit["PRO@0.3"] == default["PRO"]
    assert set(default) == {"I-AUROC", "I-AP", "I-F1max", "P-AUROC", "P-AP", "P-F1max", "PRO"}
    assert compute_metrics(scores, labels, maps, masks, pro_fpr_limit=0.05)["PRO"] == explicit["PRO@0.05"]


@pytest.mark.parametrize("limit", [0.05, 0.3])
@pytest.mark.parametrize("seed,levels", [(1, None), (2, 5), (3, 2)])
def test_pro_at_limit_equals_brute_force(seed, levels, limit):
    scores, labels, maps, masks = small_maps(seed, levels)
    got = compute_metrics(scores, labels, maps, masks, extra_pro_limits=(limit,))[f"PRO@{limit:g}"]
    assert got == pytest.approx(brute_pro(maps, masks, limit), abs=1e-12)


@pytest.mark.filterwarnings("ignore:metrics .* are undefined")  # one image: the image metrics are NaN
def test_pro_hand_computed_at_005():
    # 1 image, 20 normal pixels valued 0..19 (/100), one 2-pixel region at 0.185 and 0.5: the region is half found
    # from FPR 0 and whole from FPR 1/20 (0.185 is above 19 negatives, tied with none) -> at FPR 0.05 the curve has
    # run 0.5 over [0, 0.05]: area 0.5 * 0.05 / 0.05 = 0.5 (the jump to 1 happens at FPR 0.05 exactly).
    maps = np.zeros((1, 2, 11), dtype=np.float32)
    maps[0].ravel()[:20] = np.arange(20) / 100
    maps[0, 1, 9], maps[0, 1, 10] = 0.185, 0.5
    masks = np.zeros_like(maps, dtype=np.uint8)
    masks[0, 1, 9:] = 1
    got = compute_metrics(np.array([1.0]), np.array([1]), maps, masks, extra_pro_limits=(0.05,))
    assert got["PRO@0.05"] == pytest.approx(0.5)
    assert brute_pro(maps, masks, 0.05) == pytest.approx(0.5)


def test_per_category_mean_includes_extra_limits_and_bad_limit_is_an_error():
    scores, labels, maps, masks = small_maps(4)
    twice = [np.concatenate([x, x]) for x in (scores, labels, maps, masks)]
    rows, mean = compute_category_metrics(*twice, ["a"] * 4 + ["b"] * 4, extra_pro_limits=(0.05,))
    assert mean["PRO@0.05"] == pytest.approx(rows["a"]["PRO@0.05"]) == rows["b"]["PRO@0.05"]
    with pytest.raises(ValueError, match="PRO integration limit 0 must be in"):
        compute_metrics(scores, labels, maps, masks, extra_pro_limits=(0,))


# --- SegF1 --------------------------------------------------------------------------------------------------------


def test_validation_threshold_rules_hand_computed():
    val = np.array([[[0.0, 1.0], [2.0, 3.0]]])  # mean 1.5, population std sqrt(1.25)
    assert validation_threshold(val) == pytest.approx(1.5 + 3 * math.sqrt(1.25))
    assert validation_threshold(val, rule=ThresholdRule("mean_std", k=1.0)) == pytest.approx(1.5 + math.sqrt(1.25))
    assert validation_threshold(val, rule=ThresholdRule("quantile", q=0.5)) == pytest.approx(1.5)
    # a defective validation image is not used
    both = np.concatenate([val, np.full((1, 2, 2), 100.0)])
    assert validation_threshold(both, labels=[0, 1]) == validation_threshold(val)


def test_no_validation_images_is_a_one_line_error_naming_the_fix():
    with pytest.raises(ValueError, match=r"dataset.val_ratio>0 .* validation split") as err:
        validation_threshold(np.zeros((0, 4, 4)))
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="val_ratio"):
        validation_threshold(np.zeros((2, 4, 4)), labels=[1, 1])


def test_segf1_hand_computed_and_against_sklearn():
    maps = np.array([[[0.9, 0.2], [0.7, 0.1]], [[0.8, 0.0], [0.0, 0.0]]])
    masks = np.array([[[1, 1], [0, 0]], [[0, 0], [0, 0]]])
    # threshold 0.5: predicted {0.9, 0.7, 0.8}; TP 1 (0.9), FP 2 (0.7, 0.8), FN 1 (0.2) -> 2/(2+2+1)
    assert segf1(maps, masks, 0.5) == pytest.approx(2 / 5)
    assert segf1(maps, masks, 0.9) == pytest.approx(0.0)  # strictly above: nothing predicted, TP 0
    rng = np.random.default_rng(0)
    m, k = rng.random((5, 8, 8)), (rng.random((5, 8, 8)) > 0.8).astype(int)
    for t in (0.3, 0.7):
        assert segf1(m, k, t) == pytest.approx(f1_score(k.ravel(), (m > t).ravel()))
    assert math.isnan(segf1(np.zeros((1, 2, 2)), np.zeros((1, 2, 2)), 0.5))


# --- sample-level (Real-IAD) --------------------------------------------------------------------------------------


def test_sample_scores_are_the_max_over_views_and_metrics_equal_sklearn():
    #            sample:  a    a    a    b    b    c    c    d    e    e
    scores = np.array([0.1, 0.7, 0.3, 0.2, 0.2, 0.9, 0.4, 0.5, 0.6, 0.05])
    labels = np.array([0, 1, 0, 0, 0, 0, 1, 0, 0, 0])
    ids = ["a", "a", "a", "b", "b", "c", "c", "d", "e", "e"]
    s_scores, s_labels, keys = sample_scores(scores, labels, ids)
    assert [k[1] for k in keys] == ["a", "b", "c", "d", "e"]
    assert s_scores.tolist() == [0.7, 0.2, 0.9, 0.5, 0.6]
    assert s_labels.tolist() == [1, 0, 1, 0, 0]
    got = sample_metrics(scores, labels, ids)
    assert got["S-AUROC"] == pytest.approx(roc_auc_score([1, 0, 1, 0, 0], [0.7, 0.2, 0.9, 0.5, 0.6]))
    assert got["S-AUROC"] == 1.0  # hand: both defective samples (0.7, 0.9) above every normal one (<= 0.6)
    assert got["S-AP"] == pytest.approx(average_precision_score([1, 0, 1, 0, 0], [0.7, 0.2, 0.9, 0.5, 0.6]))


def test_sample_ids_are_per_category_and_missing_ids_are_an_error():
    s_scores, _, keys = sample_scores([0.1, 0.2, 0.3], [0, 0, 1], ["x", "x", "x"], ["c1", "c2", "c1"])
    assert keys == [("c1", "x"), ("c2", "x")] and s_scores.tolist() == [0.3, 0.2]
    with pytest.raises(ValueError, match="no sample id"):
        sample_scores([0.1, 0.2], [0, 1], ["x", None])


# --- sPRO (MVTec LOCO) --------------------------------------------------------------------------------------------


def _channel(shape, region, saturation, relative=False, value=1, scale=1.0):
    mask = np.zeros(shape, dtype=bool)
    mask[region] = True
    return GroundTruthChannel(mask, DefectType("d", value, saturation, relative), scale)


def test_spro_saturation_hand_computed():
    # a region of 100 px with an absolute saturation of 50 px: 30 px found -> 0.6, 70 px -> 1.0
    ch = _channel((10, 10), np.s_[:, :], 50)
    for found, expected in ((30, 0.6), (50, 1.0), (70, 1.0)):
        m = np.zeros((10, 10))
        m.ravel()[:found] = 1.0
        assert mean_spro_at([m], [[ch]], 0.5) == pytest.approx(expected)
    # relative 0.25 of 100 px -> 25 px: 10 found -> 0.4
    rel = _channel((10, 10), np.s_[:, :], 0.25, relative=True)
    m = np.zeros((10, 10))
    m.ravel()[:10] = 1.0
    assert mean_spro_at([m], [[rel]], 0.5) == pytest.approx(0.4)
    assert rel.saturation_area() == 25.0
    assert _channel((10, 10), np.s_[:3, :3], 0.5, relative=True).saturation_area() == 4.0  # int(0.5 * 9)
    assert _channel((10, 10), np.s_[:3, :3], 50).saturation_area() == 9.0  # min(threshold, area)
    assert _channel((10, 10), np.s_[:, :], 400, scale=0.1).saturation_area() == pytest.approx(40.0)


def brute_au_spro(maps, channels, limit):
    """From the definition: every distinct threshold t (anomalous: score >= t, i.e. > the next lower value), the
    mean over channels of min(TP / saturation area, 1), FPR over pixels outside every channel."""
    normal = np.ones(maps.shape, dtype=bool)
    for i, chans in enumerate(channels):
        for ch in chans:
            normal[i] &= ~ch.mask
    points = [(0.0, 0.0)]
    for t in sorted(set(maps.ravel().tolist()), reverse=True):
        hit = maps >= t
        spro = np.mean([min((hit[i] & ch.mask).sum() / ch.saturation_area(), 1.0)
                        for i, chans in enumerate(channels) for ch in chans])  # fmt: skip
        points.append((hit[normal].sum() / normal.sum(), spro))
    return area_up_to(points, limit)


def loco_case(seed, levels=None):
    rng = np.random.default_rng(seed)
    maps = rng.random((4, 8, 8)).astype(np.float32)
    channels = [
        [],
        [_channel((8, 8), np.s_[1:5, 1:5], 6), _channel((8, 8), np.s_[3:7, 4:8], 0.5, relative=True, value=2)],
        [_channel((8, 8), np.s_[0:2, 0:8], 0.3, relative=True, value=2)],
        [_channel((8, 8), np.s_[5:8, 0:3], 100)],  # threshold above the area: plain overlap
    ]
    for i, chans in enumerate(channels):
        for ch in chans:
            maps[i][ch.mask] += 0.5 * rng.random(int(ch.mask.sum())).astype(np.float32)
    if levels:
        maps = (np.floor(maps * levels) / levels).astype(np.float32)
    return maps, channels


@pytest.mark.parametrize("limit", [0.05, 0.3, 1.0])
@pytest.mark.parametrize("seed,levels", [(0, None), (1, 4), (2, 9)])
def test_au_spro_equals_brute_force(seed, levels, limit):
    maps, channels = loco_case(seed, levels)
    assert au_spro(maps, channels, limit) == pytest.approx(brute_au_spro(maps, channels, limit), abs=1e-12)


def test_au_spro_hand_computed():
    # normals 0.00..0.19 (20 px) in a good image; one channel of 4 px at 0.9, 0.8, 0.1, 0.1 with saturation 2:
    # at FPR 0 already 2 of 2 needed found -> sPRO 1 from the start: AU-sPRO 1 at any limit.
    maps = np.zeros((2, 4, 5), dtype=np.float32)
    maps[0].ravel()[:] = np.arange(20) / 100
    maps[1].ravel()[:4] = [0.9, 0.8, 0.1, 0.1]
    ch = _channel((4, 5), np.s_[0, 0:4], 2)
    maps[1].ravel()[4:] = -1.0  # defect-free pixels of the defective image, below everything
    assert au_spro(maps, [[], [ch]], 0.05) == pytest.approx(1.0)
    # saturation 4 (the whole region): 0.5 until the two 0.1 pixels, reached only at FPR 9/36 > 0.05.
    ch4 = _channel((4, 5), np.s_[0, 0:4], 4)
    assert au_spro(maps, [[], [ch4]], 0.05) == pytest.approx(0.5)


def test_defects_config_and_gt_folder(tmp_path):
    from PIL import Image

    missing = tmp_path / "breakfast_box" / "defects_config.json"
    with pytest.raises(FileNotFoundError, match=r"defects_config\.json") as err:
        read_defects_config(missing)
    assert str(missing) in str(err.value) and "\n" not in str(err.value)
    config = tmp_path / "defects_config.json"
    config.write_text(json.dumps([
        {"defect_name": "missing_part", "pixel_value": 255, "saturation_threshold": 1200, "relative_saturation": False},
        {"defect_name": "scratch", "pixel_value": 7, "saturation_threshold": 1.0, "relative_saturation": True},
    ]))  # fmt: skip
    defects = read_defects_config(config)
    assert defects[255].saturation_threshold == 1200 and defects[7].relative_saturation
    folder = tmp_path / "gt" / "000"
    folder.mkdir(parents=True)
    a = np.zeros((40, 60), np.uint8)
    a[0:20, 0:30] = 255
    b = np.zeros((40, 60), np.uint8)
    b[30:40, 50:60] = 7
    Image.fromarray(a).save(folder / "000.png")
    Image.fromarray(b).save(folder / "001.png")
    chans = read_gt_channels(folder, defects, size=(20, 30))
    assert [c.defect.name for c in chans] == ["missing_part", "scratch"]
    assert chans[0].mask.sum() == 150 and chans[0].area_scale == pytest.approx(0.25)
    assert chans[0].saturation_area() == pytest.approx(150.0)  # min(1200 * 0.25, 150)
    with pytest.raises(ValueError, match=r"pixel value 3 is not in defects_config\.json"):
        channel_from_array(np.full((2, 2), 3, np.uint8), defects)


def test_anomaly_metrics_passes_the_pro_limits_to_the_suite():
    from anomaly_zoo.metrics import AnomalyMetrics

    scores, labels, maps, masks = small_maps(5)
    metric = AnomalyMetrics(pro_fpr_limit=0.1, extra_pro_limits=(0.05,))
    metric.update(maps, scores, masks, labels=labels)
    expected = compute_metrics(scores, labels, maps, masks, pro_fpr_limit=0.1, extra_pro_limits=(0.05,))
    assert metric.compute() == expected and "PRO@0.05" in expected
    with pytest.raises(ValueError, match="PRO integration limit 2"):
        AnomalyMetrics(extra_pro_limits=(2,))
