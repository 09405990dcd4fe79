"""Benchmark: DIVAD's batched pipeline vs a naive reference loop, real-size Stable Diffusion with random weights.

    .venv/bin/python experiments/bench_divad.py [--size 512] [--batch 8] [--images 8] [--dtype bfloat16]

Builds SD 2.1-base's UNet, VAE and text encoder at their published sizes from configs (random weights: timing does
not depend on them; nothing is downloaded) and times, in one process:
  (a) this pipeline: batched, T'=10 inversion + 10 denoising steps with CFG, optional bf16/fp16, SDPA attention,
      channels_last, text embeddings cached per category;
  (b) the official script's loop: batch 1, fp32, 48 inversion + 60 sampling UNet calls per image.
Prints images/s for both, the ratio, and peak GPU memory (CUDA) or process RSS (CPU). On CPU use a reduced size,
e.g. --size 256 --batch 4 --images 4, and say so when quoting the ratio.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import time

import torch
from bench_common import peak_text, synchronizer

from anomaly_zoo.methods.divad.pipeline import (
    DDIMStep,
    DiffusionReconstructor,
    InversionSchedule,
    StableDiffusionParts,
)


def official_loop_inversion(num_steps: int, train_steps: int = 1000) -> list[DDIMStep]:
    """The official script computes every inversion latent of its grid (48 of 50) and keeps the one it needs: its
    UNet calls, for timing the script's per-image loop."""
    step = train_steps // num_steps
    return [DDIMStep(t, t - step, t) for t in range(1 + step, train_steps - step + 1, step)]


def sd21_base_random(
    dtype: torch.dtype, tiny: bool = False, device: str | torch.device = "cpu"
) -> StableDiffusionParts:
    """SD 2.1-base at its published sizes (UNet 865 M, VAE 84 M, OpenCLIP-H text encoder 340 M), random weights,
    built directly on `device`. `tiny`: the same architecture with a few channels and layers (CPU smoke runs)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if tiny:
        unet_kw = dict(
            sample_size=8,
            cross_attention_dim=32,
            attention_head_dim=8,
            block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            layers_per_block=1,
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            norm_num_groups=8,
        )
        vae_kw = dict(block_out_channels=(16, 32, 32, 32), layers_per_block=1, norm_num_groups=8)
        text_kw = dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=2)
    else:
        unet_kw = dict(
            sample_size=64,
            cross_attention_dim=1024,
            attention_head_dim=(5, 10, 20, 20),
            use_linear_projection=True,
            block_out_channels=(320, 640, 1280, 1280),
        )
        vae_kw = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2)
        text_kw = dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=23,
                       projection_dim=1024, hidden_act="gelu")  # fmt: skip
    with torch.device(device):
        unet = UNet2DConditionModel(**unet_kw)
        vae = AutoencoderKL(latent_channels=4, down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, **vae_kw)  # fmt: skip
        text = CLIPTextModel(CLIPTextConfig(**text_kw))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)  # fmt: skip
    tokenize = lambda prompts: torch.randint(0, 49408, (len(prompts), 77))  # noqa: E731 - timing only
    unet, vae, text = (m.to(dtype) for m in (unet, vae, text))
    return StableDiffusionParts(vae, unet, text, tokenize, scheduler.config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--naive-images", type=int, default=1)
    parser.add_argument("--dtype", default="bfloat16" if torch.cuda.is_available() else "float32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(
        f"machine: {torch.cuda.get_device_name() if device.type == 'cuda' else platform.machine() + ' CPU'}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, {datetime.date.today()}, {args.size} px"
    )

    fast_parts = sd21_base_random(getattr(torch, args.dtype), device=device)
    if device.type == "cuda":
        fast_parts.unet.to(memory_format=torch.channels_last)
    fast = DiffusionReconstructor(fast_parts, InversionSchedule.paper(50, 10), resolution=args.size)
    images = torch.rand(args.images, 3, args.size, args.size, device=device)
    sync = synchronizer(device)
    fast(images[:1], ["an image of a bottle"])  # warm-up, text cache
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync()
    start = time.perf_counter()
    for i in range(0, args.images, args.batch):
        chunk = images[i : i + args.batch]
        fast(chunk, ["an image of a bottle"] * len(chunk))
    sync()
    fast_ips = args.images / (time.perf_counter() - start)
    print(f"(a) pipeline: {fast_ips:.4f} images/s (batch {args.batch}, {args.dtype}, T'=10), peak {peak_text(device)}")
    del fast, fast_parts

    naive_parts = sd21_base_random(torch.float32, device=device)
    naive = DiffusionReconstructor(naive_parts, InversionSchedule.official(), resolution=args.size)
    naive.inversion_steps = official_loop_inversion(50)
    naive._text_cache.clear()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync()
    start = time.perf_counter()
    for i in range(args.naive_images):
        naive._text_cache.clear()  # the official script encodes the prompt for every image
        naive(images[i : i + 1].float(), ["an image of a bottle"])
    sync()
    naive_ips = args.naive_images / (time.perf_counter() - start)
    print(
        f"(b) naive loop (batch 1, fp32, 48 inversion + 60 sampling calls): {naive_ips:.4f} images/s, "
        f"peak {peak_text(device)}"
    )
    print(f"speed-up: {fast_ips / naive_ips:.1f}x")


if __name__ == "__main__":
    main()
