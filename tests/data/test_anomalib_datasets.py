"""Issue #26's datasets, each through a tiny layout (tests/helpers/anomalib_layouts.py, or written here): the indexed
samples (labels, masks, categories, Real-IAD object ids, LOCO anomaly kinds, validation splits) against what the test
wrote, and the one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from anomaly_zoo.data import AnomalyDataModule, DatasetLayoutError
from anomaly_zoo.data.anomalib_sets import index
from anomaly_zoo.data.registry import get_dataset_info
from tests.helpers.anomalib_layouts import SIZE
from tests.helpers.anomalib_layouts import image as _image
from tests.helpers.anomalib_layouts import loco as _loco
from tests.helpers.anomalib_layouts import mask as _mask
from tests.helpers.anomalib_layouts import mvtec_ad2 as _mvtec_ad2
from tests.helpers.anomalib_layouts import realiad as _realiad


def _split(name: str, root: Path, category: str, split: str, **options) -> list:
    return index(get_dataset_info(name), root, category, split, options)


def _by_name(samples) -> dict[str, object]:
    return {Path(s.image_path).relative_to(Path(s.image_path).parents[2]).as_posix(): s for s in samples}


def test_mvtec_ad2_splits_validation_and_private_sets(tmp_path):
    w = _mvtec_ad2(tmp_path)
    assert sorted(s.image_path for s in _split("mvtec_ad2", tmp_path, "can", "train")) == sorted(w["train"])
    val = _split("mvtec_ad2", tmp_path, "can", "val")
    assert [(s.image_path, s.label) for s in val] == [(w["val"][0], 0)]
    public = {s.image_path: s for s in _split("mvtec_ad2", tmp_path, "can", "test")}
    assert set(public) == {*w["public_good"], *w["public_bad"]}
    assert (public[w["public_bad"][0]].label, public[w["public_bad"][0]].mask_path) == (1, w["mask"][0])
    assert (public[w["public_good"][0]].label, public[w["public_good"][0]].mask_path) == (0, None)
    private = _split("mvtec_ad2", tmp_path, "can", "test", test_split="test_private")
    assert sorted(s.image_path for s in private) == sorted(w["private"]) and {s.label for s in private} == {-1}
    mixed = _split("mvtec_ad2", tmp_path, "can", "test", test_split="test_private_mixed")
    assert [s.image_path for s in mixed] == w["mixed"] and all(s.mask_path is None for s in mixed)


def test_mvtec_ad2_datamodule_serves_its_validation_images(tmp_path):
    w = _mvtec_ad2(tmp_path)
    dm = AnomalyDataModule("mvtec_ad2", str(tmp_path), protocol="per_category", category="can", num_workers=0,
                           image_size=32)  # fmt: skip
    dm.setup()
    assert [s.image_path for s in dm.val_dataset.samples] == w["val"] and len(dm.train_dataset) == 3
    assert dm.ground_truth and len(dm.val_dataloader().dataset) == 1
    private = AnomalyDataModule("mvtec_ad2", str(tmp_path), protocol="per_category", category="can",
                                test_split="test_private")  # fmt: skip
    assert not private.ground_truth
    with pytest.raises(ValueError, match=r"own validation images.*val_ratio=0"):
        AnomalyDataModule("mvtec_ad2", str(tmp_path), protocol="per_category", category="can", val_ratio=0.2)
    with pytest.raises(ValueError, match=r"dataset.test_split='test_secret' is not one of test_public"):
        AnomalyDataModule("mvtec_ad2", str(tmp_path), category="can", test_split="test_secret")
    with pytest.raises(ValueError, match=r"dataset.resolution is not a key of dataset=mvtec_ad2"):
        AnomalyDataModule("mvtec_ad2", str(tmp_path), category="can", resolution=256)


def test_another_datasets_layout_names_the_dataset_the_path_and_the_layout(tmp_path):
    """An MVTec AD category (test/<defect>, ground_truth/<defect>) where MVTec AD 2 is asked for."""
    _image(tmp_path / "can/train/good/000.png")
    _image(tmp_path / "can/test/crack/000.png")
    _mask(tmp_path / "can/ground_truth/crack/000_mask.png")
    with pytest.raises(DatasetLayoutError) as err:
        _split("mvtec_ad2", tmp_path, "can", "test")
    message = str(err.value)
    assert "dataset=mvtec_ad2" in message and str(tmp_path / "can" / "test_public") in message
    assert "Expected layout: {root}/{category}/train/good" in message and "\n" not in message


def test_realiad_carries_each_images_object_id(tmp_path):
    _realiad(tmp_path)
    train = _split("realiad", tmp_path, "audiojack", "train")
    assert [s.sample_id for s in train] == ["audiojack/OK/S0001"] * 2 and {s.label for s in train} == {0}
    test = _split("realiad", tmp_path, "audiojack", "test")
    assert [(s.sample_id, s.label) for s in test] == [
        ("audiojack/NG/AK/S0003", 1), ("audiojack/NG/AK/S0003", 1), ("audiojack/OK/S0002", 0), ("audiojack/OK/S0002", 0)
    ]  # fmt: skip
    assert [Path(s.mask_path).name for s in test if s.mask_path] == ["audiojack_0003_NG_C1_2023.png",
                                                                     "audiojack_0003_NG_C2_2023.png"]  # fmt: skip


def test_realiad_split_file_key_and_a_missing_file(tmp_path):
    _realiad(tmp_path, "realiad_jsons/realiad_jsons_sv")
    assert len(_split("realiad", tmp_path, "audiojack", "test", json_path="single_view")) == 4
    missing = tmp_path / "realiad_jsons/realiad_jsons/audiojack.json"
    with pytest.raises(DatasetLayoutError, match=rf"Real-IAD split file {missing} is missing"):
        _split("realiad", tmp_path, "audiojack", "test")
    with pytest.raises(DatasetLayoutError, match=r"category folder .*realiad_512/audiojack is missing"):
        _split("realiad", tmp_path, "audiojack", "test", json_path="single_view", resolution=512)


def test_mvtec_loco_anomaly_kinds_and_several_masks_per_image(tmp_path):
    w = _loco(tmp_path)
    test = {s.image_path: s for s in _split("mvtec_loco", tmp_path, "breakfast_box", "test")}
    kinds = {w["good"]: "good", w["logical"]: "logical_anomalies", w["structural"]: "structural_anomalies"}
    assert {p: s.anomaly_kind for p, s in test.items()} == kinds
    assert test[w["logical"]].masks == (w["l0"], w["l1"]) and test[w["structural"]].masks == (w["s0"],)
    assert test[w["good"]].masks == () and test[w["logical"]].label == 1 and test[w["good"]].label == 0
    dm = AnomalyDataModule("mvtec_loco", str(tmp_path), protocol="per_category", category="breakfast_box",
                           num_workers=0, image_size=SIZE[::-1])  # fmt: skip
    dm.setup()
    assert [s.image_path for s in dm.val_dataset.samples] == [w["val"]]
    assert dm.defects_configs == {"breakfast_box": tmp_path / "breakfast_box" / "defects_config.json"}
    item = dm.test_dataset[[s.image_path for s in dm.test_dataset.samples].index(w["logical"])]
    expected = np.zeros(SIZE[::-1], bool)
    expected[0:3, 0:3] = expected[10:12, 10:12] = True  # the union of the image's two mask files
    assert np.array_equal(item["mask"].numpy().astype(bool), expected)


def test_mvtec_loco_without_defects_config_names_the_file(tmp_path):
    _loco(tmp_path, config=False)
    dm = AnomalyDataModule("mvtec_loco", str(tmp_path), protocol="per_category", category="breakfast_box")
    with pytest.raises(DatasetLayoutError, match=rf"{tmp_path / 'breakfast_box' / 'defects_config.json'} is missing"):
        dm.setup()


def test_kolektor_labels_come_from_the_masks(tmp_path):
    written = {}
    for item, part, defect in [("kos01", 0, False), ("kos01", 1, True), *[("kos02", i, False) for i in range(5)]]:
        mask = _mask(tmp_path / item / f"Part{part}_label.bmp", (1, 1, 5, 5) if defect else None)
        written[(item, part)] = (_image(tmp_path / item / f"Part{part}.jpg"), mask)
    train = _split("kolektor", tmp_path, "kolektor", "train")
    test = _split("kolektor", tmp_path, "kolektor", "test")
    assert {s.label for s in train} == {0} and len(train) + len(test) == 7
    defective = [s for s in test if s.label == 1]
    assert [(s.image_path, s.mask_path) for s in defective] == [written[("kos01", 1)]]
    assert {s.category for s in train + test} == {"kolektor"}


@pytest.mark.parametrize(
    ("name", "category", "defect", "mask"),
    [("autovi", "engine_wiring", "fastening", "ground_truth/fastening/0002/0000.png"),
     ("vad", "vad", "bad", "ground_truth/bad/0002_mask.png")],
)  # fmt: skip
def test_autovi_and_vad(tmp_path, name, category, defect, mask):
    """MVTec-like test folders; masks in a folder per image (AutoVI) or beside each other (VAD)."""
    cat = tmp_path / category
    train, good = _image(cat / "train/good/0000.png"), _image(cat / "test/good/0001.png")
    bad, mask_file = _image(cat / f"test/{defect}/0002.png"), _mask(cat / mask)
    assert [s.image_path for s in _split(name, tmp_path, category, "train")] == [train]
    test = _split(name, tmp_path, category, "test")
    assert [(s.image_path, s.label, s.mask_path) for s in test] == [(bad, 1, mask_file), (good, 0, None)]


def test_bmad_sub_datasets_with_and_without_masks(tmp_path):
    brain, chest = tmp_path / "Brain", tmp_path / "Chest"
    w = {"brain_bad": _image(brain / "test/Ungood/img/2.png"), "brain_mask": _mask(brain / "test/Ungood/label/2.png"),
         "brain_good": _image(brain / "test/good/img/1.png"), "chest_bad": _image(chest / "test/Ungood/img/5.png"),
         "chest_good": _image(chest / "test/good/img/4.png")}  # fmt: skip
    _mask(brain / "test/good/label/1.png", None)
    for root in (brain, chest):
        _image(root / "train/good/0.png")
    test = _split("bmad", tmp_path, "Brain", "test")
    assert [(s.image_path, s.label, s.mask_path) for s in test] == [(w["brain_bad"], 1, w["brain_mask"]),
                                                                    (w["brain_good"], 0, None)]  # fmt: skip
    dm = AnomalyDataModule("bmad", str(tmp_path), categories=["Brain", "Chest"], num_workers=0, image_size=16)
    dm.setup()
    chest_bad = next(s for s in dm.test_dataset.samples if s.image_path == w["chest_bad"])
    assert chest_bad.label == 1 and chest_bad.mask_path is None and not dm.require_masks
    assert dm.pixel_metrics == "none for Chest: bmad has no masks for them"
    only_chest = AnomalyDataModule("bmad", str(tmp_path), categories=["Chest"], num_workers=0)
    only_chest.setup()
    assert only_chest.pixel_metrics == "none: bmad has no masks"


def test_kaputt_trains_on_normals_only(tmp_path):
    pytest.importorskip("pyarrow")
    import pandas as pd

    (tmp_path / "datasets").mkdir()
    for split in ("train", "validation", "test"):
        rows = []
        for i, defect in enumerate((False, True)):
            name = f"{split}_{i}.jpg"
            _image(tmp_path / "query-image" / name)
            if defect:
                _mask(tmp_path / "query-mask" / name.replace(".jpg", ".png"))
            rows.append({"capture_id": f"{split}{i}", "item_identifier": f"item{i}", "item_material": "cardboard",
                         "defect_types": "", "defect": defect, "query_image": name, "query_crop": name,
                         "query_mask": name.replace(".jpg", ".png")})  # fmt: skip
        pd.DataFrame(rows).to_parquet(tmp_path / "datasets" / f"query-{split}.parquet")
    train = _split("kaputt", tmp_path, "cardboard", "train")
    assert [(Path(s.image_path).name, s.label) for s in train] == [("train_0.jpg", 0)]
    test = _split("kaputt", tmp_path, "cardboard", "test")
    found = [(Path(s.image_path).name, s.label, bool(s.mask_path)) for s in test]
    assert found == [("test_0.jpg", 0, False), ("test_1.jpg", 1, True)]


@pytest.mark.parametrize("name", ["mvtec_ad2", "mvtec_loco", "kolektor", "autovi", "vad", "bmad", "kaputt", "realiad"])
def test_every_dataset_has_a_config_a_source_and_a_licence(name):
    from omegaconf import OmegaConf

    from tests.conftest import CONF_DIR

    info = get_dataset_info(name)
    assert "https://" in info.source and info.licence
    cfg = OmegaConf.load(Path(CONF_DIR) / "dataset" / f"{name}.yaml")
    assert cfg.name == name and all(key in cfg for key, _ in info.options)


def test_results_images_table_keeps_object_ids_and_anomaly_kinds_where_samples_have_them(tmp_path):
    from anomaly_zoo.data import Sample
    from anomaly_zoo.evaluation.per_image import image_table

    views = [Sample(str(tmp_path / f"c/NG/S1/v{i}.jpg"), None, 1, "c", sample_id="c/NG/S1") for i in (1, 2)]
    table = image_table(views, np.array([0.2, 0.9]), np.array([1, 1]), str(tmp_path))
    assert table["sample_id"] == ["c/NG/S1", "c/NG/S1"] and "anomaly_kind" not in table
    plain = image_table([Sample(str(tmp_path / "a.png"), None, 0, "c")], np.array([0.1]), np.array([0]), None)
    assert set(plain) == {"path", "category", "label", "defect", "score"}


def test_download_where_anomalib_cannot_says_where_to_get_the_data(tmp_path):
    dm = AnomalyDataModule("realiad", str(tmp_path / "Real-IAD"), categories=["audiojack"], download=True)
    where = (
        r"^dataset=realiad cannot be downloaded automatically .*https://huggingface.co/datasets/REAL-IAD/Real-IAD"
        r".*put it under .*Real-IAD as \{root\}/realiad_"
    )
    with pytest.raises(DatasetLayoutError, match=where):
        dm.prepare_data()
    _realiad(tmp_path / "Real-IAD")
    dm.prepare_data()  # there already: nothing to fetch
