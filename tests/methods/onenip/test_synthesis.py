"""Pseudo-anomalies: exact masks, seeded, DTD or procedural textures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from anomaly_zoo.methods.onenip.synthesis import PseudoAnomalyGenerator


def _images(n=12, size=64):
    torch.manual_seed(0)
    base = torch.nn.functional.interpolate(torch.rand(n, 3, 8, 8), size=size, mode="bilinear")
    return base * 0.5 + 0.25


def test_masks_are_binary_and_mark_every_change():
    images = _images()
    out, masks = PseudoAnomalyGenerator()(images, torch.Generator().manual_seed(1))
    assert out.shape == images.shape and masks.shape == (12, 64, 64)
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    assert (masks.flatten(1).sum(1) > 0).all(), "an anomaly is always applied"
    changed = (out - images).abs().amax(1) > 1e-6
    assert not (changed & (masks == 0)).any(), "nothing changes outside the mask"


def test_seeded_and_both_styles_occur():
    images = _images(20)
    a = PseudoAnomalyGenerator()(images, torch.Generator().manual_seed(3))
    b = PseudoAnomalyGenerator()(images, torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    only_cutpaste = PseudoAnomalyGenerator(cutpaste_probability=1.0)(images, torch.Generator().manual_seed(3))[1]
    only_perlin = PseudoAnomalyGenerator(cutpaste_probability=0.0)(images, torch.Generator().manual_seed(3))[1]
    assert not torch.equal(only_cutpaste, only_perlin)


def test_dtd_textures(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no images/\*/\*.jpg"):
        PseudoAnomalyGenerator(dtd_dir=str(tmp_path))
    (tmp_path / "images" / "banded").mkdir(parents=True)
    Image.fromarray(np.full((40, 40, 3), (250, 0, 0), dtype=np.uint8)).save(tmp_path / "images" / "banded" / "a.jpg")
    gen = PseudoAnomalyGenerator(dtd_dir=str(tmp_path), cutpaste_probability=0.0)
    _, masks = gen(_images(4), torch.Generator().manual_seed(0))
    assert (masks.flatten(1).sum(1) > 0).all()
