"""The embedded synthetic benchmark: deterministic, MVTec layout, exact masks, not solvable by a trivial detector."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from anomaly_zoo.data import AnomalyDataModule
from anomaly_zoo.data.synthetic import (
    CATEGORIES,
    OBJECT_CATEGORIES,
    TEXTURE_CATEGORIES,
    SyntheticSizes,
    defect_types,
    ensure_synthetic_dataset,
)
from anomaly_zoo.metrics import compute_metrics

TINY = SyntheticSizes(train=2, test_good=1, test_per_defect=1)


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.png")):
        h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


def test_generation_is_deterministic_and_seeded(tmp_path):
    a = ensure_synthetic_dataset(tmp_path / "a", seed=3, sizes=TINY)
    b = ensure_synthetic_dataset(tmp_path / "b", seed=3, sizes=TINY)
    c = ensure_synthetic_dataset(tmp_path / "c", seed=4, sizes=TINY)
    assert _digest(a) == _digest(b) != _digest(c)


def test_layout_categories_and_defect_types(synthetic_root):
    assert len(CATEGORIES) >= 5 and TEXTURE_CATEGORIES and OBJECT_CATEGORIES
    sizes = SyntheticSizes()
    for category in CATEGORIES:
        assert len(defect_types(category)) >= 3
        assert len(list((synthetic_root / category / "train" / "good").glob("*.png"))) == sizes.train
        for defect in defect_types(category):
            images = sorted((synthetic_root / category / "test" / defect).glob("*.png"))
            assert len(images) == sizes.test_per_defect
            for image in images:
                mask = np.asarray(
                    Image.open(synthetic_root / category / "ground_truth" / defect / f"{image.stem}_mask.png")
                )
                assert set(np.unique(mask)) == {0, 255}, "masks are exact binary masks"
                assert mask.shape == Image.open(image).size[::-1]
                assert 0 < (mask > 0).mean() < 0.05, "defects are small"


def test_masks_mark_exactly_the_changed_pixels(tmp_path):
    # Re-run one defect with and without its application: outside the mask nothing may change.
    from anomaly_zoo.data import synthetic

    sources = synthetic._Sources()
    for category in ("brick", "logo"):
        for defect in defect_types(category):
            rng = np.random.default_rng(1)
            img, fg = sources.normal(rng, category)
            out, mask = synthetic.DEFECTS[defect](rng, img.copy(), fg, sources, category)
            changed = np.abs(out - img).max(axis=2) > 0
            assert mask.any()
            assert not (changed & ~mask).any(), f"{category}/{defect} changed pixels outside its mask"
            assert changed[mask].mean() > 0.9, f"{category}/{defect}: mask covers unchanged pixels"


def test_an_older_or_different_copy_is_regenerated(tmp_path):
    # A copy this generator wrote (its marker says so) with other settings or an older generator version is
    # replaced by a fresh one, so a generator change never leaves stale images behind.
    import json

    fresh = ensure_synthetic_dataset(tmp_path / "fresh", seed=4, sizes=TINY)
    root = ensure_synthetic_dataset(tmp_path / "data", seed=3, sizes=TINY)
    assert _digest(ensure_synthetic_dataset(root, seed=4, sizes=TINY)) == _digest(fresh)
    marker = root / "synthetic_dataset.json"
    old = json.loads(marker.read_text())
    marker.write_text(json.dumps({**old, "generator_version": old["generator_version"] - 1}))
    (root / "brick" / "train" / "good" / "000.png").unlink()
    assert ensure_synthetic_dataset(root, seed=4, sizes=TINY) == root
    assert json.loads(marker.read_text()) == old and _digest(root) == _digest(fresh)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "fresh"], "no temporary folders left behind"


def test_refuses_to_write_into_a_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="refusing"):
        ensure_synthetic_dataset(tmp_path / "mine", sizes=TINY)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


@pytest.mark.slow
def test_trivial_detectors_do_not_solve_it(synthetic_root):
    """A fair benchmark: image-mean and pixel-difference-to-mean-image detectors stay below I-AUROC 0.95."""
    dm = AnomalyDataModule("synthetic", str(synthetic_root), image_size=128, num_workers=0)
    dm.setup()
    best = {}
    for category in CATEGORIES:
        train = torch.stack([s["image"] for s in dm.train_dataset if s["category"] == category])
        test = [s for s in dm.test_dataset if s["category"] == category]
        x = torch.stack([s["image"] for s in test])
        labels = np.array([s["label"] for s in test])
        masks = torch.stack([s["mask"] for s in test])
        diff = torch.nn.functional.avg_pool2d((x - train.mean(0)).abs().mean(1, keepdim=True), 5, 1, 2)[:, 0]
        mean_score = (x.mean((1, 2, 3)) - train.mean()).abs()
        r_diff = compute_metrics(diff.flatten(1).amax(1), labels, diff, masks)["I-AUROC"]
        r_mean = compute_metrics(mean_score, labels, diff, masks)["I-AUROC"]
        best[category] = max(r_diff, r_mean, 1 - r_diff, 1 - r_mean)  # even with the sign flipped
    assert max(best.values()) < 0.95, best
