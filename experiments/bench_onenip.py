"""Benchmark: OneNIP training and inference throughput and peak memory per device.

    .venv/bin/python experiments/bench_onenip.py [--backbone efficientnet_b4] [--device cuda] [--bf16]

Builds OneNIP at paper size (hidden 256, FFN 1024, 4+4 layers) at 224 px, batch 8, and times full training steps
(pseudo-anomaly synthesis, three backbone streams, transformer, refiner, backward, AdamW) and inference batches.
Timing does not depend on the weights, so `--backbone efficientnet_b4` uses random weights (no download);
the default `efficientnet_lite0` uses its packaged ImageNet weights. Prints images/s and peak memory.
"""

from __future__ import annotations

import argparse
import contextlib

import torch
from bench_common import machine_line, peak_text, reset_peak_memory, synchronizer, time_calls

from anomaly_zoo.backbones import FeatureExtractor
from anomaly_zoo.methods.onenip import OneNIP

BACKBONES = {  # name: (timm name, weights, normalisation, static padding size)
    "efficientnet_lite0": ("tf_efficientnet_lite0", "package", "tf", None),
    "efficientnet_b4": ("tf_efficientnet_b4", "random", "imagenet", 380),  # as conf/backbone/efficientnet_b4.yaml
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", choices=sorted(BACKBONES), default="efficientnet_lite0")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU)")
    parser.add_argument("--channels-last", action="store_true")
    args = parser.parse_args()
    timm_name, weights, norm, static_pad = BACKBONES[args.backbone]
    device = torch.device(args.device)
    backbone = FeatureExtractor(args.backbone, timm_name, [0, 1, 2, 3], weights=weights, normalization=norm,
                                static_padding_size=static_pad)  # fmt: skip
    model = OneNIP(backbone, image_size=args.size, channels_last=args.channels_last).to(device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    images = torch.rand(args.batch, 3, args.size, args.size, device=device)
    feats_for_prompt = model.features(images)
    rng = torch.Generator().manual_seed(0)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if args.bf16 else contextlib.nullcontext()
    sync = synchronizer(device)

    def train_step() -> None:
        with autocast:
            feats = model.features(images)
            losses = model._losses(images, feats, feats_for_prompt, rng, jitter=True)
            loss = model.total_loss(losses)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        optimizer.step()

    def infer_step() -> None:
        with torch.no_grad(), autocast:
            model.reconstruct(model.features(images), feats_for_prompt, jitter=False)

    model.train()
    results = {}
    for name, step in (("train", train_step), ("inference", infer_step)):
        if name == "inference":
            model.eval()
        step()
        sync()
        reset_peak_memory(device)
        seconds, _ = time_calls(step, sync, args.steps, warmup=0)
        results[name] = (args.batch / seconds, peak_text(device))
    print(machine_line(device))
    print(
        f"OneNIP paper size, {args.backbone} ({model.neck.channels} ch), {args.size} px, batch {args.batch}, "
        f"bf16={args.bf16}, channels_last={args.channels_last}"
    )
    for name, (ips, peak) in results.items():
        print(f"{name:>9}: {ips:8.2f} images/s, peak memory {peak}")


if __name__ == "__main__":
    main()
