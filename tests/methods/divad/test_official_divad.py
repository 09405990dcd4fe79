"""DIVAD beside the official scripts, stage by stage: github.com/giddyyupp/DIVAD @ 9acef11 (`ddim_inversion.py`,
then `test.py`, with DINO's own ViT code from github.com/facebookresearch/dino).

Needs checkouts (work trees) of both repositories; skipped otherwise:

    ANOMALY_ZOO_OFFICIAL_DIVAD=/path/to/DIVAD ANOMALY_ZOO_DINO_SRC=/path/to/dino \\
        .venv/bin/python -m pytest tests/methods/divad/test_official_divad.py -s   # -s prints the table

The official code is imported from those paths, never copied here: the scripts' imports and function definitions
(everything before their argparse block) are executed, and single statements of their main loops (the CutLER mask
read, the `v1s8` DINO settings) are run as they are written. Both sides get the same modules: the project's tiny
random Stable Diffusion (with a Hugging Face CLIP tokenizer built from open_clip's bundled vocabulary, as SD uses,
and SD 2.1-base's scheduler config) and random DINO ViT-S/8 weights made with DINO's own model code, saved in DINO's
checkpoint format and loaded here through `DinoViT`. The official VAE draw is unseeded; it is seeded as this project
seeds its draw (shared noise). `.cuda()` is a no-op during the official calls. The one literal changed: the SD input
size, `R` below instead of the script's 512 (CPU time); the 512-px resize itself is checked separately. Random weights
make magnitudes indicative only: what matters is that each difference is at float rounding.

Each stage feeds both sides the official side's input of that stage, so differences do not compound; the end-to-end
rows then run the framework (dataset with input views, DIVAD.score_batch) against the whole official chain.
"""

from __future__ import annotations

import ast
import importlib.machinery
import importlib.util
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

OFFICIAL = os.environ.get("ANOMALY_ZOO_OFFICIAL_DIVAD")
DINO_SRC = os.environ.get("ANOMALY_ZOO_DINO_SRC")
pytestmark = [
    pytest.mark.skipif(
        not OFFICIAL, reason="set ANOMALY_ZOO_OFFICIAL_DIVAD to a work tree of github.com/giddyyupp/DIVAD (9acef11)"
    ),
    pytest.mark.skipif(
        not DINO_SRC, reason="set ANOMALY_ZOO_DINO_SRC to a work tree of github.com/facebookresearch/dino"
    ),
]

R, S, SEED, CATEGORY = 128, 256, 0, "metal_nut"  # SD input size here (official: 512), DINO/map size, seed, class
NIS, INF_STEP, SS = 50, 100, 40  # the official README's ddim_inversion.py flags
# scheduler/scheduler_config.json of stabilityai/stable-diffusion-2-1-base (PNDM; the script turns it into DDIM)
SD21_BASE_SCHEDULER = {
    "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
    "num_train_timesteps": 1000, "prediction_type": "epsilon", "set_alpha_to_one": False, "skip_prk_steps": True,
    "steps_offset": 1, "trained_betas": None,
}  # fmt: skip
TOLERANCE = 1e-5  # latents and maps (issue 16)


# ------------------------------------------------------------------------------------------------ official code
def _is_parser_assignment(node: ast.stmt) -> bool:
    return isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "parser" for t in node.targets)


def official_definitions(path: Path) -> dict:
    """Run an official script's imports, constants and function definitions: its statements before `parser = ...`."""
    tree = ast.parse(path.read_text())
    body = []
    for node in tree.body:
        if _is_parser_assignment(node):
            break
        body.append(node)
    namespace = {"__name__": f"official_{path.stem}", "__file__": str(path)}
    exec(compile(ast.Module(body=body, type_ignores=[]), str(path), "exec"), namespace)
    return namespace


def official_statement(path: Path, predicate) -> types.CodeType:
    """The first statement of an official script (anywhere in it) that `predicate` accepts, compiled alone."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.stmt) and predicate(node):
            return compile(ast.Module(body=[node], type_ignores=[]), str(path), "exec")
    raise LookupError(f"{path}: statement not found (a different version of the official code?)")


def _tests_name(node: ast.stmt, name: str) -> bool:
    return isinstance(node, ast.If) and getattr(node.test, "id", None) == name


def _tests_value(node: ast.stmt, value: str) -> bool:
    return (
        isinstance(node, ast.If)
        and isinstance(node.test, ast.Compare)
        and any(getattr(c, "value", None) == value for c in node.test.comparators)
    )


def _tests_mask_skip(node: ast.stmt) -> bool:
    return isinstance(node, ast.If) and "carpet" in ast.unparse(node.test)


class IndexLog:
    """Stands in for scheduler.alphas_cumprod and records each index looked up (the noise levels really used)."""

    def __init__(self, values: torch.Tensor) -> None:
        self.values, self.log = values, []

    def __getitem__(self, index):
        self.log.append(int(index))
        return self.values[index]


def clip_tokenizer():
    """A Hugging Face CLIPTokenizer (the class SD's pipelines use) over open_clip's bundled BPE vocabulary."""
    from open_clip.tokenizer import SimpleTokenizer, default_bpe
    from transformers import CLIPTokenizer

    simple = SimpleTokenizer(default_bpe())
    special = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {special.get(token, token): i for token, i in simple.encoder.items()}
    merges = [pair for pair, _ in sorted(simple.bpe_ranks.items(), key=lambda item: item[1])]
    return CLIPTokenizer(vocab=vocab, merges=merges, pad_token="!", model_max_length=77)  # SD 2.x pads with "!"


def random_dino_checkpoint(dino_dir: Path, path: Path) -> torch.nn.Module:
    """DINO's own ViT-S/8 with random weights (LayerNorm affines and position grid not at their init), saved in the
    format of DINO's dino_deitsmall8_pretrain.pth; returns the model."""
    torch.manual_seed(SEED + 1)
    model = torch.hub.load(str(dino_dir), "dino_vits8", source="local", pretrained=False).eval()
    g = torch.Generator().manual_seed(SEED + 2)
    state = model.state_dict()
    for key, value in state.items():
        if "norm" in key or key == "pos_embed":
            value.add_(0.3 * torch.randn(value.shape, generator=g))
    model.load_state_dict(state)
    torch.save(state, path)
    return model


def make_dataset(root: Path, masks: Path) -> None:
    """MVTec layout, one class, a normal and a defective test image of different original sizes, a ground truth, and
    CutLER instance masks written as CutLER's demo writes them."""
    import skimage.data
    from PIL import Image

    for defect, array, size in (
        ("good", skimage.data.coffee(), (333, 222)),
        ("scratch", skimage.data.astronaut(), (300, 300)),
    ):
        folder = root / CATEGORY / "test" / defect
        folder.mkdir(parents=True)
        Image.fromarray(array).resize(size, Image.Resampling.BICUBIC).save(folder / "000.png")
        w, h = size
        yy, xx = np.mgrid[0:h, 0:w]
        objects = np.stack([((xx - 0.45 * w) / (0.3 * w)) ** 2 + ((yy - 0.5 * h) / (0.33 * h)) ** 2 < 1,
                            ((xx - 0.75 * w) / (0.12 * w)) ** 2 + ((yy - 0.3 * h) / (0.2 * h)) ** 2 < 1])  # fmt: skip
        (masks / CATEGORY / defect).mkdir(parents=True)
        np.savez(f"{masks}/{CATEGORY}/{defect}/000.png_cutler.png", objects if defect == "scratch" else objects[0])
        if defect != "good":
            gt = (np.abs(xx - 0.6 * w) < 0.08 * w) & (np.abs(yy - 0.55 * h - 0.5 * (xx - 0.6 * w)) < 0.02 * h)
            (root / CATEGORY / "ground_truth" / defect).mkdir(parents=True)
            Image.fromarray(gt.astype(np.uint8) * 255).save(root / CATEGORY / "ground_truth" / defect / "000_mask.png")


def max_diff(a, b) -> float:
    a = a.detach().double().cpu().numpy() if torch.is_tensor(a) else np.asarray(a, dtype=np.float64)
    b = b.detach().double().cpu().numpy() if torch.is_tensor(b) else np.asarray(b, dtype=np.float64)
    a, b = np.squeeze(a), np.squeeze(b)
    assert a.shape == b.shape, f"shapes {a.shape} vs {b.shape}"
    return float(np.abs(a - b).max())


# ------------------------------------------------------------------------------------------------ the comparison
@pytest.fixture(scope="module")
def compared(tmp_path_factory) -> dict:
    """Every stage of both codes on the same images; returns {stage: value} (max abs differences, lists, counts)."""
    official_dir, dino_dir = Path(OFFICIAL).expanduser(), Path(DINO_SRC).expanduser()
    for folder, files in (
        (official_dir, ("ddim_inversion.py", "test.py", "eval_helper.py")),
        (dino_dir, ("hubconf.py",)),
    ):
        missing = [f for f in files if not (folder / f).is_file()]
        assert not missing, f"{folder}: no {', '.join(missing)}; point the variable at a work tree of the repository"
    work = tmp_path_factory.mktemp("official_divad")
    with pytest.MonkeyPatch.context() as mp, torch.no_grad():
        mp.syspath_prepend(str(official_dir))  # test.py imports eval_helper
        if importlib.util.find_spec("tabulate") is None:  # eval_helper imports it only to print its metric table
            stub = types.ModuleType("tabulate")
            stub.__spec__ = importlib.machinery.ModuleSpec("tabulate", None)  # importlib's find_spec asks for it
            mp.setitem(sys.modules, "tabulate", stub)
        mp.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)
        mp.setattr(torch.nn.Module, "cuda", lambda self, *a, **k: self)
        return _compare(official_dir, dino_dir, work, mp)


def _compare(official_dir: Path, dino_dir: Path, work: Path, mp: pytest.MonkeyPatch) -> dict:
    from diffusers import DDIMScheduler, PNDMScheduler, StableDiffusionPipeline
    from PIL import Image

    from anomaly_zoo.backbones.diffusion import _hf_tokenizer, tiny_random_stable_diffusion
    from anomaly_zoo.backbones.dino_vit import DinoViT
    from anomaly_zoo.data import AnomalyDataModule
    from anomaly_zoo.data.image_dataset import AnomalyImageDataset
    from anomaly_zoo.data.views import ImageView
    from anomaly_zoo.methods.divad import DIVAD
    from anomaly_zoo.methods.divad.anomaly_map import (
        feature_dissimilarity,
        finish_map,
        reconstructions_for_features,
        repeated_average_max,
    )
    from anomaly_zoo.methods.divad.masks import cutler_masks

    out: dict = {}
    root, mask_dir = work / "data", work / "cutler"
    make_dataset(root, mask_dir)

    # the same networks on both sides
    tokenizer = clip_tokenizer()
    with pytest.warns(UserWarning, match="RANDOM weights"):
        parts = tiny_random_stable_diffusion(SEED)
    parts.tokenize = _hf_tokenizer(tokenizer)  # as models.load_stable_diffusion builds a real model
    parts.scheduler_config = dict(
        DDIMScheduler.from_config(PNDMScheduler.from_config(SD21_BASE_SCHEDULER).config).config
    )
    pipe = StableDiffusionPipeline(
        vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=tokenizer, unet=parts.unet,
        scheduler=PNDMScheduler.from_config(SD21_BASE_SCHEDULER), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )  # fmt: skip
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)  # ddim_inversion.py, after loading SD
    dino = random_dino_checkpoint(dino_dir, work / "dino_deitsmall8_pretrain.pth")
    extractor = DinoViT(weights="file", weights_path=str(work / "dino_deitsmall8_pretrain.pth"))

    # the official code
    inv = official_definitions(official_dir / "ddim_inversion.py")
    inv["pipe"] = pipe
    test = official_definitions(official_dir / "test.py")
    mp.setattr(torch.hub, "load", lambda *a, **k: dino)
    test["dino_version"] = "v1s8"
    exec(official_statement(official_dir / "test.py", lambda n: _tests_value(n, "v1s8")), test)  # DINO, sizes
    test["pretrained_model"] = test["pretrained_model"].eval()
    import eval_helper

    transform, target_transform = test["data_transforms"]((S, S)), test["gt_transforms"]((S, S))
    read_mask = official_statement(official_dir / "test.py", lambda n: _tests_name(n, "fg_mask_dir"))
    skip_mask = official_statement(official_dir / "test.py", _tests_mask_skip)
    to_tensor = inv["tfms"].functional.to_tensor

    # the framework's side: DIVAD as experiment=divad_official configures it, its dataset with input views
    method = DIVAD(parts, extractor, schedule="official", num_steps=NIS, start_steps=NIS - SS, sampling_grid=INF_STEP,
                   resolution=R, map_size=S, humanize_prompt=False, mask="cutler", cutler_mask_dir=str(mask_dir),
                   seed=SEED).eval()  # fmt: skip
    datamodule = AnomalyDataModule("mvtec", str(root), categories=[CATEGORY], image_size=S, num_workers=0,
                                   mask_resize="bilinear_nonzero", eval_batch_size=1, use_train_split=False,
                                   views=method.input_views())  # fmt: skip
    datamodule.setup()
    method.setup_test(datamodule.test_context())  # as anomaly_zoo.test does: the dataset root for the mask lookup
    batches = list(datamodule.test_dataloader())  # one image per batch, as the official scripts run
    rec = method.reconstructor
    mean, std = extractor.mean, extractor.std

    unet_t: list[int] = []
    hook = parts.unet.register_forward_pre_hook(lambda _m, args: unet_t.append(int(args[1])))

    def logged(fn, *args, **kwargs):
        """Run an official function; return its output and its steps as (UNet t, alpha index from, to)."""
        log, start = IndexLog(pipe.scheduler.alphas_cumprod), len(unet_t)
        pipe.scheduler.alphas_cumprod = log
        try:
            result = fn(*args, **kwargs)
        finally:
            pipe.scheduler.alphas_cumprod = log.values
        return result, [(t, log.log[2 * i], log.log[2 * i + 1]) for i, t in enumerate(unet_t[start:])]

    official_maps, official_scores = [], []

    def compare_image(batch: dict, defect: str) -> None:
        """Every stage for one image; appends the official end-to-end map and score."""
        path, i = batch["path"][0], 0
        name, tag = Path(path).name, f"[{defect}]"
        prompt = f"An image of a {CATEGORY}"  # ddim_inversion.py: f"An image of a {cl}", the folder name
        # ---- SD input, VAE latent, text
        x = to_tensor(inv["load_image"](path, size=(R, R)))[None]
        out[f"SD input {R} px {tag}"] = max_diff(x, batch["views"]["sd"][i])
        x512 = to_tensor(inv["load_image"](path, size=(512, 512)))  # the script's literal size
        view512 = ImageView(512, method.input_views()["sd"].resample)
        sample = next(s for s in datamodule.test_dataset.samples if s.image_path == path)
        ours512 = AnomalyImageDataset([sample], S, views={"sd": view512})[0]
        out[f"SD input 512 px {tag}"] = max_diff(x512, ours512["views"]["sd"])
        torch.manual_seed(SEED)  # shared noise: the official draw is unseeded, this project seeds its own
        latent = 0.18215 * pipe.vae.encode(x * 2 - 1).latent_dist.sample()
        out[f"VAE latent {tag}"] = max_diff(latent, rec.encode(x))
        embeddings = pipe._encode_prompt(prompt, "cpu", 1, True, "")  # [negative ""; prompt], as invert()/sample()
        uncond, cond = rec.text_embeddings([""], "cpu"), rec.text_embeddings([method.prompt(CATEGORY)], "cpu")
        out[f"text embeddings {tag}"] = max(max_diff(embeddings[0], uncond), max_diff(embeddings[1], cond))
        # ---- inversion, denoising, decode
        inverted, inv_steps = logged(
            inv["invert"], latent, prompt, num_inference_steps=NIS, do_classifier_free_guidance=True
        )
        start = inverted[-(SS + 1)][None]  # ddim_inversion.py: inverted_latents[-(start_step + 1)]
        out[f"inversion steps {tag}"] = (inv_steps[: len(rec.inversion_steps)], len(inverted) - (SS + 1))
        out[f"inverted latent {tag}"] = max_diff(start, rec.invert(latent, cond, uncond))
        seen = {}
        real_decode = pipe.decode_latents

        def capture(latents):
            seen["latent"], seen["image"] = latents.clone(), real_decode(latents)
            return seen["image"]

        pipe.decode_latents = capture
        try:
            (image,), smp_steps = logged(inv["sample"], prompt, start_latents=start, start_step=SS,
                                         num_inference_steps=INF_STEP)  # fmt: skip
        finally:
            del pipe.decode_latents
        out[f"sampling steps {tag}"] = smp_steps
        out[f"denoised latent {tag}"] = max_diff(seen["latent"], rec.denoise(start, cond, uncond))
        decoded = rec.decode(seen["latent"])
        out[f"decoded image {tag}"] = max_diff(torch.from_numpy(seen["image"]).permute(0, 3, 1, 2), decoded)
        png = work / f"{defect}_{name}_sampled.png"
        image.save(png)  # ddim_inversion.py: sampled_orj_image.save(...)
        # ---- DINO inputs
        official_in = transform(Image.open(path).convert("RGB"))[None]  # test.py: transform(input_img)
        official_rec = transform(Image.open(png).convert("RGB"))[None]  # transform(output_img)
        out[f"DINO input image {tag}"] = max_diff(official_in, (batch["views"]["dino"][i : i + 1] - mean) / std)
        ours_rec = reconstructions_for_features(torch.from_numpy(seen["image"]).permute(0, 3, 1, 2), S)
        out[f"DINO input reconstruction {tag}"] = max_diff(official_rec, (ours_rec - mean) / std)
        # ---- features, map, mask, blur, score (run_amap_extraction, intermediate values recorded)
        ns = {"fg_mask_dir": str(mask_dir), "object_name": CATEGORY, "sf": defect, "im_name": name,
              "image_size": (S, S), "data_set": "mvtec", "np": np, "Image": Image, "os": os}  # fmt: skip
        exec(read_mask, ns)
        exec(skip_mask, ns)
        recorded = {}
        real_map, real_blur = test["cal_anomaly_map"], test["gaussian_filter"]

        def record_map(fs, ft, *a, **k):
            recorded["fs"], recorded["ft"] = fs[0], ft[0]
            result = real_map(fs, ft, *a, **k)
            recorded["map"] = result[0].copy()
            return result

        def record_blur(x, *a, **k):
            recorded["masked"] = x.copy()
            recorded["blurred"] = real_blur(x, *a, **k)
            return recorded["blurred"]

        test["cal_anomaly_map"], test["gaussian_filter"] = record_map, record_blur
        try:
            pred = test["run_amap_extraction"](
                official_in.clone(), official_rec.clone(), f"{defect}_{name}", str(work / "res"), CATEGORY, "v1s8",
                True, False, ns["fg_mask"],
            )  # fmt: skip
        finally:
            test["cal_anomaly_map"], test["gaussian_filter"] = real_map, real_blur
        f_in, f_rec = extractor(official_in * std + mean)[0], extractor(official_rec * std + mean)[0]
        out[f"DINO features {tag}"] = max(max_diff(recorded["fs"], f_in), max_diff(recorded["ft"], f_rec))
        given = iter([recorded["fs"], recorded["ft"]])  # the official features, in the order they are asked for
        ours_map, _ = feature_dissimilarity(lambda _x: [next(given)], official_in, official_rec, S)
        out[f"cosine map {tag}"] = max_diff(recorded["map"], ours_map)
        ours_mask = cutler_masks([path], root, mask_dir, S)[0]
        out[f"object mask, differing px {tag}"] = int(
            (torch.from_numpy(ns["fg_mask"].astype(np.float32)) != ours_mask).sum()
        )
        blurred = finish_map(
            torch.from_numpy(recorded["map"]).float()[None], ours_mask[None], method.hparams.blur_sigma
        )
        out[f"masked + blurred map {tag}"] = max_diff(recorded["blurred"], blurred)
        unmasked = finish_map(torch.from_numpy(recorded["map"]).float()[None], None, method.hparams.blur_sigma)
        out[f"blurred map, no mask {tag}"] = max_diff(real_blur(recorded["map"], sigma=5), unmasked)
        score = eval_helper.EvalImageMax.encode_pred(recorded["blurred"][None])
        out[f"image score {tag}"] = max_diff(score, repeated_average_max(torch.from_numpy(recorded["blurred"])[None]))
        if defect != "good":  # test.py's ground truth, > 0 in eval_helper
            gt = Image.open(root / CATEGORY / "ground_truth" / defect / "000_mask.png").convert("L")
            official_gt = target_transform(gt)[0] > 0
            out["ground truth, differing px"] = int((official_gt.float() != batch["mask"][i]).sum())
        official_maps.append(pred[0, 0])
        official_scores.append(float(eval_helper.EvalImageMax.encode_pred(pred[0].numpy())[0]))
        official_pngs.append(png)

    official_pngs: list[Path] = []
    for batch, defect in zip(batches, ("good", "scratch"), strict=True):
        compare_image(batch, defect)
    hook.remove()
    out["ours inversion steps"] = [(s.unet_t, s.src, s.dst) for s in rec.inversion_steps]
    out["ours sampling steps"] = [(s.unet_t, s.src, s.dst) for s in rec.sampling_steps]
    # ---- end to end: the framework's batches through DIVAD.score_batch (as anomaly_zoo.test calls it)
    recons: list[torch.Tensor] = []
    capture = rec.register_forward_hook(lambda _m, _args, output: recons.append(output))
    results = [method.score_batch(b["image"], list(b["category"]), list(b["path"]), b["views"]) for b in batches]
    capture.remove()
    for recon, png, defect in zip(recons, official_pngs, ("good", "scratch"), strict=True):
        ours_uint8 = (recon[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)  # as numpy_to_pil
        differing = int((ours_uint8 != np.asarray(Image.open(png).convert("RGB"))).sum())
        out[f"reconstruction uint8, differing values [{defect}]"] = differing
    maps = torch.cat([r["anomaly_maps"] for r in results])
    out["end to end: maps"] = max_diff(torch.stack(official_maps), maps)
    out["end to end: image scores"] = max_diff(
        np.array(official_scores), torch.cat([r["pred_scores"] for r in results])
    )
    return out


# ------------------------------------------------------------------------------------------------ the assertions
def _rows(compared: dict, prefix: str) -> dict:
    rows = {k: v for k, v in compared.items() if k.startswith(prefix)}
    assert rows, prefix
    return rows


@pytest.mark.parametrize(
    "stage",
    ["SD input", "VAE latent", "text embeddings", "inverted latent", "denoised latent", "decoded image",
     "DINO input image", "DINO input reconstruction", "DINO features", "cosine map", "masked + blurred map",
     "blurred map, no mask", "image score", "end to end"],
)  # fmt: skip
def test_stage_equals_the_official_code(compared, stage):
    for key, diff in _rows(compared, stage).items():
        assert diff <= TOLERANCE, f"{key}: max abs difference {diff:.3g}"


def test_timesteps_equal_the_official_loops(compared):
    for tag in ("[good]", "[scratch]"):
        official_inversion, kept = compared[f"inversion steps {tag}"]
        assert official_inversion == compared["ours inversion steps"]  # the steps behind the kept latent
        assert kept == len(compared["ours inversion steps"]) - 1  # which is the last one run here
        assert compared[f"sampling steps {tag}"] == compared["ours sampling steps"]


def test_masks_reconstruction_and_ground_truth_equal_the_official_code(compared):
    for key, count in {**_rows(compared, "object mask"), **_rows(compared, "reconstruction uint8"),
                       **_rows(compared, "ground truth")}.items():  # fmt: skip
        assert count == 0, f"{key}: {count}"


def test_print_the_comparison(compared, capsys):
    """The table the README quotes (run with -s)."""
    with capsys.disabled():
        print(f"\nDIVAD vs official (SD input {R} px, DINO/maps {S} px, random weights): stage | max abs difference")
        for key, value in compared.items():
            if not isinstance(value, list | tuple):
                print(f"  {key:<52} | {value:.3g}" if isinstance(value, float) else f"  {key:<52} | {value}")
