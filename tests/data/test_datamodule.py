"""The one datamodule: batches, protocols, the folder layout and clear errors on bad input."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from anomaly_zoo.data import AnomalyDataModule, DatasetLayoutError, ImageReadError
from anomaly_zoo.data.synthetic import SyntheticSizes


def _mvtec_copy(synthetic_root, tmp_path, category="logo"):
    """A private MVTec-layout tree (as dataset=mpdd, MVTec layout) that a test may damage."""
    root = tmp_path / "mvtec_like"
    shutil.copytree(synthetic_root / category, root / category)
    return root


def test_batch_contract_unified(synthetic_root):
    dm = AnomalyDataModule("synthetic", str(synthetic_root), image_size=96, num_workers=0, eval_batch_size=5)
    dm.setup()
    batch = next(iter(dm.test_dataloader()))
    assert batch["image"].shape == (5, 3, 96, 96) and batch["image"].dtype == torch.float32
    assert batch["image"].min() >= 0.0 and batch["image"].max() <= 1.0
    assert batch["mask"].shape == (5, 96, 96) and set(batch["mask"].unique().tolist()) <= {0.0, 1.0}
    assert batch["label"].tolist() == [int(m.any()) for m in batch["mask"]]
    assert isinstance(batch["category"][0], str) and batch["path"][0].endswith(".png")
    assert {s.category for s in dm.test_dataset.samples} == set(dm.categories) and len(dm.categories) >= 5
    train_labels = {s.label for s in dm.train_dataset.samples}
    assert train_labels == {0}


def test_per_category_protocol_and_validation_split(synthetic_root):
    dm = AnomalyDataModule(
        "synthetic", str(synthetic_root), protocol="per_category", category="coin", num_workers=0, val_ratio=0.2
    )
    dm.setup()
    assert {s.category for s in dm.test_dataset.samples} == {"coin"}
    assert len(dm.val_dataset) == 6 and len(dm.train_dataset) == 24
    assert not {s.image_path for s in dm.val_dataset.samples} & {s.image_path for s in dm.train_dataset.samples}


def test_normalization_is_applied(synthetic_root):
    dm = AnomalyDataModule("synthetic", str(synthetic_root), image_size=32, normalization="imagenet", num_workers=0)
    dm.setup()
    raw = AnomalyDataModule("synthetic", str(synthetic_root), image_size=32, num_workers=0)
    raw.setup()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    assert torch.allclose(dm.test_dataset[0]["image"], (raw.test_dataset[0]["image"] - mean) / std, atol=1e-6)


def test_missing_root_explains_layout_and_source(tmp_path):
    dm = AnomalyDataModule("mvtec", str(tmp_path / "nowhere"), protocol="per_category", category="bottle")
    with pytest.raises(DatasetLayoutError, match=r"nowhere does not exist.*Expected layout.*mvtec.com"):
        dm.setup()


def test_unknown_category_lists_valid_ones(synthetic_root):
    with pytest.raises(ValueError, match=r"unknown category \['bottle'\].*brick, grass"):
        AnomalyDataModule("synthetic", str(synthetic_root), protocol="per_category", category="bottle")
    with pytest.raises(ValueError, match=r"needs dataset\.category"):
        AnomalyDataModule("synthetic", str(synthetic_root), protocol="per_category")
    with pytest.raises(KeyError, match="known datasets: mvtec"):
        AnomalyDataModule("imagenet", str(synthetic_root))


def test_corrupt_image_is_named(synthetic_root, tmp_path):
    root = _mvtec_copy(synthetic_root, tmp_path)
    bad = root / "logo" / "test" / "good" / "000.png"
    bad.write_bytes(b"not a png at all")
    dm = AnomalyDataModule("mpdd", str(root), protocol="per_category", category="bracket_black")
    with pytest.raises(DatasetLayoutError):  # wrong category name for mpdd: the folder is missing
        dm.setup()
    dm = AnomalyDataModule("synthetic", str(root), categories=["logo"], num_workers=0)
    dm.setup()
    index = [s.image_path for s in dm.test_dataset.samples].index(str(bad))
    with pytest.raises(ImageReadError, match=r"cannot read image .*test/good/000.png"):
        dm.test_dataset[index]


def test_mask_of_wrong_size_is_named(synthetic_root, tmp_path):
    root = _mvtec_copy(synthetic_root, tmp_path)
    mask_path = root / "logo" / "ground_truth" / "stain" / "001_mask.png"
    Image.fromarray(np.zeros((100, 120), dtype=np.uint8)).save(mask_path)
    dm = AnomalyDataModule("synthetic", str(root), categories=["logo"], num_workers=0)
    dm.setup()
    index = [s.mask_path for s in dm.test_dataset.samples].index(str(mask_path))
    with pytest.raises(ImageReadError, match=r"001_mask.png is 120x100 but its image is 256x256"):
        dm.test_dataset[index]


def test_missing_mask_is_named(synthetic_root, tmp_path):
    root = _mvtec_copy(synthetic_root, tmp_path)
    (root / "logo" / "ground_truth" / "scratch" / "002_mask.png").unlink()
    dm = AnomalyDataModule("synthetic", str(root), categories=["logo"], num_workers=0)
    with pytest.raises(DatasetLayoutError, match=r"have no mask, e.g. .*scratch/002.png"):
        dm.setup()


def test_folder_layout_for_your_own_images(synthetic_root, tmp_path):
    root = tmp_path / "mine"
    src = synthetic_root / "coin"
    shutil.copytree(src / "train" / "good", root / "ok")
    shutil.copytree(src / "test" / "stain", root / "bad")
    (root / "masks").mkdir()
    for mask in (src / "ground_truth" / "stain").glob("*_mask.png"):
        shutil.copy(mask, root / "masks" / mask.name.replace("_mask", ""))
    dm = AnomalyDataModule(
        "folder", str(root), category="coins", normal_dir="ok", abnormal_dir="bad", mask_dir="masks", num_workers=0
    )
    dm.setup()
    labels = [s.label for s in dm.test_dataset.samples]
    # every stain image is defective; anomalib holds out some normals for testing
    assert labels.count(1) == SyntheticSizes().test_per_defect and labels.count(0) > 0
    item = dm.test_dataset[labels.index(1)]
    assert item["category"] == "coins" and item["mask"].sum() > 0
    with pytest.raises(DatasetLayoutError, match=r"dataset.abnormal_dir: folder .*nope does not exist"):
        AnomalyDataModule("folder", str(root), normal_dir="ok", abnormal_dir="nope").setup()


def test_input_views_come_from_the_original_file_and_one_decode(synthetic_root, monkeypatch):
    """A method's input views are PIL resizes of the original file (not of the resized `image`), made from the
    same decode."""
    from anomaly_zoo.data import image_dataset
    from anomaly_zoo.data.views import ImageView

    dm = AnomalyDataModule("synthetic", str(synthetic_root), categories=["logo"], image_size=32, num_workers=0)
    dm.views = {"sd": ImageView(80, "bicubic"), "dino": ImageView(48, "bilinear")}
    dm.setup()
    reads = []
    real = image_dataset.load_image
    monkeypatch.setattr(image_dataset, "load_image", lambda p: (reads.append(p), real(p))[1])
    item = dm.test_dataset[0]
    assert len(reads) == 1
    with Image.open(item["path"]) as img:
        rgb = img.convert("RGB")
        expected_sd = np.asarray(rgb.resize((80, 80), Image.Resampling.BICUBIC), dtype=np.float32) / 255
        expected_dino = np.asarray(rgb.resize((48, 48), Image.Resampling.BILINEAR), dtype=np.float32) / 255
    assert torch.equal(item["views"]["sd"], torch.from_numpy(expected_sd).permute(2, 0, 1))
    assert torch.equal(item["views"]["dino"], torch.from_numpy(expected_dino).permute(2, 0, 1))
    batch = next(iter(dm.test_dataloader()))
    assert batch["views"]["sd"].shape[1:] == (3, 80, 80) and batch["image"].shape[-1] == 32


def test_ground_truth_resize_bilinear_nonzero_is_the_official_divad_evaluation():
    """test.py: torchvision Resize (PIL bilinear) of the 0/255 mask, ToTensor, then `> 0` in eval_helper."""
    from torchvision import transforms

    from anomaly_zoo.data.image_dataset import resize_mask

    mask = np.zeros((90, 70), dtype=bool)
    mask[20:23, 10:60] = True  # a thin scratch, downscaled: bilinear > 0 keeps it wider than nearest does
    pil = Image.fromarray(mask.astype(np.uint8) * 255)
    official = transforms.Compose([transforms.Resize((32, 32)), transforms.ToTensor()])(pil)[0] > 0
    ours = resize_mask(mask, (32, 32), "bilinear_nonzero")
    assert torch.equal(ours, official.float())
    assert resize_mask(mask, (32, 32)).sum() < ours.sum()  # nearest (the default) is thinner
    with pytest.raises(ValueError, match=r"dataset\.mask_resize='cubic'"):
        AnomalyDataModule("synthetic", "/nowhere", mask_resize="cubic")
