"""DIVAD on a tiny random Stable Diffusion stack (the offline test fixture): bookkeeping, updates, the whole run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import open_dict

from anomaly_zoo.backbones.diffusion import DiffusionWeightsError, load_stable_diffusion, tiny_random_stable_diffusion
from anomaly_zoo.methods.divad.lightning_model import humanize
from anomaly_zoo.methods.divad.masks import foreground_from_features
from anomaly_zoo.methods.divad.pipeline import CLEAN, DiffusionReconstructor, InversionSchedule, ddim_update
from tests.helpers.cli import run_module


@pytest.fixture(scope="module")
def parts():
    with pytest.warns(UserWarning, match="RANDOM weights"):
        return tiny_random_stable_diffusion()


class _ZeroUNet(torch.nn.Module):
    """Stands in for the UNet with ε ≡ 0: DDIM inversion then denoising must give back the latent exactly."""

    def __init__(self, unet):
        super().__init__()
        self.inner = unet

    def forward(self, latents, t, encoder_hidden_states):
        return type("Out", (), {"sample": torch.zeros_like(latents)})()


def test_timestep_bookkeeping_paper_and_official(parts):
    """(UNet t, noise level from, to) of every step; CLEAN = the clean end (alphas_cumprod[0] for SD)."""
    paper = DiffusionReconstructor(parts, InversionSchedule.paper(50, 10), resolution=64)
    assert [(s.unet_t, s.src, s.dst) for s in paper.inversion_steps] == [
        (1, CLEAN, 1),
        (21, 1, 21),
        (41, 21, 41),
        (61, 41, 61),
        (81, 61, 81),
        (101, 81, 101),
        (121, 101, 121),
        (141, 121, 141),
        (161, 141, 161),
        (181, 161, 181),
    ]  # fmt: skip  only the T'=10 needed steps of the 50-step grid
    assert [(s.unet_t, s.src, s.dst) for s in paper.sampling_steps] == [
        (181, 181, 161),
        (161, 161, 141),
        (141, 141, 121),
        (121, 121, 101),
        (101, 101, 81),
        (81, 81, 61),
        (61, 61, 41),
        (41, 41, 21),
        (21, 21, 1),
        (1, 1, CLEAN),
    ]  # fmt: skip  denoised from the t it was inverted to, back to the clean end


def test_official_schedule_is_the_scripts_timesteps(parts):
    """ddim_inversion.py --nis 50 --inf_step 100 --ss 40 (github.com/giddyyupp/DIVAD @ 9acef11), read off its loops:
    invert() runs i = 1..48 with t = 1 + 20 i, current_t = t - 20, and the script keeps latent [-41], the 8th; sample()
    runs i = 40..99 on the 100-step grid, t = 991 - 10 i, prev_t = max(1, t - 10)."""
    official = DiffusionReconstructor(parts, InversionSchedule.official(), resolution=64)
    assert [(s.unet_t, s.src, s.dst) for s in official.inversion_steps] == [
        (21, 1, 21),
        (41, 21, 41),
        (61, 41, 61),
        (81, 61, 81),
        (101, 81, 101),
        (121, 101, 121),
        (141, 121, 141),
        (161, 141, 161),
    ]  # fmt: skip  the clean latent is taken to be at t=1: no clean -> 1 step
    sampling = [(s.unet_t, s.src, s.dst) for s in official.sampling_steps]
    assert len(sampling) == 60 and sampling[:3] == [(591, 591, 581), (581, 581, 571), (571, 571, 561)]
    assert sampling[-3:] == [(21, 21, 11), (11, 11, 1), (1, 1, 1)]  # the last step, 1 -> 1, is run as there
    assert sampling == [(t, t, max(1, t - 10)) for t in range(591, 0, -10)]
    # T' = nis - ss: T'=5 is --ss 45, inversion latent [-46] of 48 (3 steps, t=61), sampling from t=541
    leading = lambda n: list(range(1000 - 1000 // n + 1, 0, -1000 // n))  # noqa: E731  DDIM grid, steps_offset 1
    five = InversionSchedule.official(start_steps=5).steps(leading, 1000)
    assert [s.dst for s in five[0]] == [21, 41, 61] and five[1][0].unet_t == 541 and len(five[1]) == 55
    with pytest.raises(ValueError, match=r"start_steps=2 .*--ss=48"):
        InversionSchedule.official(start_steps=2)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_ddim_update_equals_diffusers_steps(prediction):
    """The written-out DDIM step against diffusers' DDIMScheduler / DDIMInverseScheduler (independent code)."""
    from diffusers import DDIMInverseScheduler, DDIMScheduler

    config = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                  set_alpha_to_one=False, steps_offset=1, prediction_type=prediction)  # fmt: skip
    sampler, inverter = DDIMScheduler(**config), DDIMInverseScheduler(**config)
    sampler.set_timesteps(50)
    inverter.set_timesteps(50)
    alphas = sampler.alphas_cumprod
    x, out = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    expected = sampler.step(out, 181, x, eta=0.0).prev_sample
    assert torch.allclose(ddim_update(x, out, alphas[181], alphas[161], prediction), expected, atol=1e-5)
    expected = sampler.step(out, 1, x, eta=0.0).prev_sample  # to the clean end
    assert torch.allclose(ddim_update(x, out, alphas[1], alphas[0], prediction), expected, atol=1e-5)
    expected = inverter.step(out, 181, x).prev_sample  # inversion 161 -> 181, model output at the target t
    for inverse in (False, True):  # the operation order of sample() or of invert(): the same step
        assert torch.allclose(ddim_update(x, out, alphas[161], alphas[181], prediction, inverse), expected, atol=1e-5)


def test_zero_unet_round_trip_is_exact(parts):
    recon = DiffusionReconstructor(parts, InversionSchedule.paper(50, 10), resolution=64)
    recon.parts.unet = _ZeroUNet(parts.unet)
    try:
        latents = torch.randn(2, 4, 8, 8)
        cond = uncond = torch.zeros(2, 77, 32)
        noisy = recon.invert(latents, cond, uncond)
        assert not torch.allclose(noisy, latents)
        assert torch.allclose(recon.denoise(noisy, cond, uncond), latents, atol=1e-5)
    finally:
        recon.parts.unet = recon.parts.unet.inner


def test_text_embeddings_are_computed_once_per_prompt(parts):
    recon = DiffusionReconstructor(parts, InversionSchedule.paper(50, 2), resolution=64)
    calls = []
    original = parts.text_encoder.forward
    parts.text_encoder.forward = lambda ids, *a, **k: (calls.append(len(ids)), original(ids, *a, **k))[1]
    try:
        recon(torch.rand(3, 3, 64, 64), ["an image of a coin"] * 3)
        recon(torch.rand(2, 3, 64, 64), ["an image of a coin", "an image of a logo"])
    finally:
        parts.text_encoder.forward = original
    assert calls == [1, 1, 1]  # the coin prompt, the empty negative prompt, then only the new logo prompt


def test_prompts_and_foreground_masks():
    assert humanize("metal_nut") == "metal nut"
    feats = torch.zeros(1, 8, 10, 10)
    feats[:, :, 3:7, 3:7] = 1.0  # an object in the middle, background at the border
    feats += 0.01 * torch.randn_like(feats)
    fg = foreground_from_features(feats, 20)
    assert fg[0, 8:12, 8:12].all() and fg[0, :4].sum() == 0


def test_hub_model_fails_fast_offline_naming_the_model(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DiffusionWeightsError, match=r"stabilityai/stable-diffusion-2-1-base.*backbone.model_id="):
        load_stable_diffusion("stabilityai/stable-diffusion-2-1-base")


DIVAD_TINY = [
    "method=divad", "backbone=sd_tiny_random", "dataset.categories=[logo,brick]", "dataset.image_size=64",
    "method.resolution=64", "method.map_size=64", "method.num_steps=50", "method.start_steps=3",
    "method.feature_extractor._target_=anomaly_zoo.backbones.FeatureExtractor", "method.feature_extractor.name=lite0",
    "method.feature_extractor.timm_name=tf_efficientnet_lite0", "method.feature_extractor.weights=package",
    "method.feature_extractor.normalization=tf", "+method.feature_extractor.out_indices=[3]",
    "method.mask=dino_foreground", "eval.heatmaps_per_category=1",
]  # fmt: skip


@pytest.mark.slow
def test_whole_divad_run_writes_complete_results(compose_cfg, tmp_path):
    from anomaly_zoo.runner import run

    cfg = compose_cfg("test", DIVAD_TINY)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
    with pytest.warns(UserWarning, match="RANDOM weights"):
        out = run(cfg, fit=False)
    res = json.loads(Path(out["results_path"]).read_text())
    assert res["method"] == "divad" and list(res["categories"]) == ["logo", "brick"]
    assert all(0 <= v <= 1 for row in res["categories"].values() for v in row.values())
    assert res["inversion_timesteps"] == [1, 21, 41] and res["sampling_start_timestep"] == 41
    assert res["schedule"] == "paper" and res["mask"] == "dino_foreground"
    assert len(list((tmp_path / "heatmaps").glob("*.png"))) == 2


@pytest.mark.slow
def test_two_process_ddp_evaluation_equals_single_process(synthetic_root, tmp_path):
    args = [
        *(a for a in DIVAD_TINY if not a.startswith(("dataset.categories", "method.start_steps", "eval."))),
        "dataset.categories=[logo]", "method.start_steps=1", "eval.heatmaps_per_category=0",
        "dataset.eval_batch_size=1", f"dataset.root={synthetic_root}", "dataset.num_workers=0",
        "trainer.enable_progress_bar=false",
    ]  # fmt: skip
    for name, extra in (("one", []), ("two", ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"])):
        run_module("anomaly_zoo.test", *args, *extra, f"hydra.run.dir={tmp_path / name}")
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert two["config"]["trainer"]["devices"] == 2
    # Same images, same per-image computation; only the CPU thread count differs between the runs (Lightning
    # splits the cores between ranks), which moves float sums in the last bits, and the reconstruction's rounding
    # to uint8 (as the official code) can turn such a bit into one grey level in a few pixels. The gathering
    # itself is exact (tests/evaluation/test_collector.py); here the values agree to 1e-4.
    for metric, value in one["categories"]["logo"].items():
        assert two["categories"]["logo"][metric] == pytest.approx(value, abs=1e-4), metric


def test_cutler_mask_file_layout_is_the_official_demos():
    """CutLER's demo_batch_mvtec_visa.py (DIVAD @ 9acef11) writes np.savez(f"{save_dir}/{cl}/{sf}/{test_im}_cutler.png")
    for <data>/<cl>/test/<sf>/<test_im>; test.py reads <mask_dir>/<cl>/<sf>/<test_im>_cutler.png.npz."""
    from anomaly_zoo.methods.divad.masks import cutler_mask_candidates

    found = cutler_mask_candidates("/data/mvtec/metal_nut/test/scratch/000.png", "/data/mvtec", "/masks")
    assert [str(p) for p in found] == [
        "/masks/metal_nut/scratch/000.png_cutler.png.npz",  # the official layout, tried first
        "/masks/metal_nut/test/scratch/000_cutler.png.npz",  # this project's earlier layout, and stem variants
        "/masks/metal_nut/test/scratch/000.npz",
        "/masks/metal_nut/test/scratch/000.png",
    ]
    outside = cutler_mask_candidates("/elsewhere/img_1.jpg", "/data/mvtec", "/masks")  # anomaly_zoo.predict
    assert [str(p) for p in outside][:2] == ["/masks/img_1.jpg_cutler.png.npz", "/masks/img_1_cutler.png.npz"]


def test_precomputed_cutler_masks_union_empty_png_and_errors(tmp_path):
    from PIL import Image

    from anomaly_zoo.methods.divad.masks import cutler_masks

    root, masks = tmp_path / "data", tmp_path / "masks"
    images = [root / "cap" / "test" / "crack" / f"00{i}.png" for i in range(3)]
    for image in images:
        image.parent.mkdir(parents=True, exist_ok=True)
        image.touch()
    (masks / "cap" / "crack").mkdir(parents=True)
    (masks / "cap" / "test" / "crack").mkdir(parents=True)
    rng = np.random.default_rng(0)
    instances = rng.random((2, 37, 37)) > 0.6  # 37 -> 16 px: PIL's and torch's nearest pick different pixels
    np.savez(f"{masks}/cap/crack/000.png_cutler.png", instances)  # exactly as CutLER's demo saves
    np.savez(masks / "cap" / "crack" / "001.png_cutler.png.npz", np.zeros((0, 37, 37), dtype=bool))
    png = np.zeros((8, 8), dtype=np.uint8)
    png[2:5, :] = 255
    Image.fromarray(png).save(masks / "cap" / "test" / "crack" / "002.png")
    out = cutler_masks([str(p) for p in images], root, masks, 16)
    assert out.shape == (3, 16, 16)
    # test.py: np.sum(masks, axis=0, dtype=bool), then np.asanyarray(Image.fromarray(mask).resize(image_size))
    official = np.asanyarray(Image.fromarray(np.sum(instances, axis=0, dtype=bool)).resize((16, 16)))
    assert torch.equal(out[0], torch.from_numpy(official).float())
    torch_nearest = torch.nn.functional.interpolate(torch.from_numpy(instances.any(0)).float()[None, None], size=16)
    assert not torch.equal(out[0], torch_nearest[0, 0])  # the two conventions differ here (issue 16, row 7)
    assert out[1].sum() == 0  # no detection: the whole map is masked, as the official code
    assert torch.equal(out[2], torch.from_numpy(png > 127).float().repeat_interleave(2, 0).repeat_interleave(2, 1))
    with pytest.raises(FileNotFoundError, match=r"no precomputed CutLER mask for .*003.png.*003.png_cutler.png.npz"):
        cutler_masks([str(images[0].with_name("003.png"))], root, masks, 16)
    (masks / "cap" / "crack" / "000.png_cutler.png.npz").write_bytes(b"not an npz")
    with pytest.raises(ValueError, match=r"cannot read CutLER mask .*000.png_cutler.png.npz"):
        cutler_masks([str(images[0])], root, masks, 16)


@pytest.mark.slow
def test_divad_run_with_precomputed_cutler_masks(compose_cfg, synthetic_root, tmp_path):
    from anomaly_zoo.runner import run

    args = [a for a in DIVAD_TINY if not a.startswith(("method.mask=", "dataset.categories", "eval."))]
    with pytest.raises(Exception, match=r"set method\.cutler_mask_dir"):  # Hydra wraps the ValueError
        run(compose_cfg("test", [*args, "method.mask=cutler"]), fit=False)
    # Empty detections everywhere: every map is zeroed, so no image or pixel ranks above another.
    masks = tmp_path / "masks"
    for image in (synthetic_root / "logo" / "test").glob("*/*.png"):
        target = masks / "logo" / image.parent.name / f"{image.name}_cutler.png.npz"  # CutLER's demo layout
        target.parent.mkdir(parents=True, exist_ok=True)
        np.savez(target, np.zeros((0, 32, 32), dtype=bool))
    cfg = compose_cfg("test", [*args, "dataset.categories=[logo]", "method.mask=cutler",
                               f"method.cutler_mask_dir={masks}", "eval.heatmaps_per_category=0"])  # fmt: skip
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
    with pytest.warns(UserWarning, match="RANDOM weights"):
        out = run(cfg, fit=False)
    res = json.loads(Path(out["results_path"]).read_text())
    assert res["mask"] == "cutler"
    assert res["categories"]["logo"]["I-AUROC"] == pytest.approx(0.5)
    assert res["categories"]["logo"]["P-AUROC"] == pytest.approx(0.5)


def test_predict_on_a_folder_reads_cutler_masks_by_file_name(compose_cfg, synthetic_root, tmp_path):
    """`anomaly_zoo.predict` passes each image's path to the method, so CutLER masks work outside the dataset too."""
    import shutil

    from anomaly_zoo.runner import predict

    folder, masks = tmp_path / "incoming", tmp_path / "masks"
    folder.mkdir()
    masks.mkdir()
    for i, src in enumerate(sorted((synthetic_root / "logo" / "test" / "good").glob("*.png"))[:4]):
        shutil.copy(src, folder / f"img_{i}.png")
        # Images 0 and 2: no detection (the map is zeroed); 1 and 3: the whole image is the object.
        np.savez(masks / f"img_{i}.png_cutler.png.npz", np.full((1 if i % 2 else 0, 32, 32), True))
    args = [a for a in DIVAD_TINY if not a.startswith(("method.mask=", "dataset.categories", "eval."))]
    cfg = compose_cfg(
        "predict",
        [*args, "method.mask=cutler", f"method.cutler_mask_dir={masks}", f"input={folder}",
         f"output={tmp_path / 'out'}", "category=logo"],
    )  # fmt: skip
    with pytest.warns(UserWarning, match="RANDOM weights"):
        rows = predict(cfg)
    scores = {Path(r.path).name: r.score for r in rows}
    assert not any(r.error for r in rows) and len(scores) == 4
    assert scores["img_0.png"] == scores["img_2.png"] == 0.0
    assert scores["img_1.png"] > 0 and scores["img_3.png"] > 0


def test_cutler_masks_need_the_image_paths():
    from anomaly_zoo.methods.divad.lightning_model import DIVAD

    method = DIVAD.__new__(DIVAD)  # only _object_masks is exercised: no diffusion model needed
    torch.nn.Module.__init__(method)
    method.hparams.update({"mask": "cutler", "cutler_mask_dir": "/nowhere", "map_size": 8})
    with pytest.raises(ValueError, match=r"method.mask=cutler .* predict_batch needs `paths`"):
        method._object_masks(torch.zeros(2, 4, 8, 8), None)


@pytest.mark.slow  # 85 s on 2 cores
def test_a_sweep_over_two_feature_extractors_on_the_tiny_sd(synthetic_root, tmp_path):
    """`+method/divad/features=...` swept: a DINO ViT-S/16 and the ImageNet ResNet-50 (three levels summed), random
    weights, each run records its extractor and scores at the size asked for."""
    args = [
        "-m", "method=divad", "backbone=sd_tiny_random", "+method/divad/features=dino_vits16,imagenet_resnet50",
        "method.feature_extractor.weights=random", "dataset.categories=[logo]", "dataset.image_size=64",
        "method.resolution=64", "method.map_size=64", "method.num_steps=50", "method.start_steps=1",
        "eval.heatmaps_per_category=0", f"dataset.root={synthetic_root}", "dataset.num_workers=0",
        "trainer.enable_progress_bar=false", f"hydra.sweep.dir={tmp_path}",
    ]  # fmt: skip
    run_module("anomaly_zoo.test", *args)
    runs = {}
    for path in tmp_path.glob("*/results.json"):
        res = json.loads(path.read_text())
        runs[res["config"]["method"]["feature_extractor"]["name"]] = res
    assert set(runs) == {"dino_vits16", "imagenet_resnet50"}
    assert runs["imagenet_resnet50"]["config"]["method"]["feature_extractor"]["out_indices"] == [1, 2, 3]
    assert all(r["eval_size"] == [64, 64] and r["status"] == "ok" for r in runs.values())
    assert runs["dino_vits16"]["categories"]["logo"] != runs["imagenet_resnet50"]["categories"]["logo"]
