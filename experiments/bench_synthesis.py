"""Benchmark: OneNIP's pseudo-anomaly synthesis against anomalib's anomaly generators.

    .venv/bin/python experiments/bench_synthesis.py [--device cuda] [--size 224] [--batch 8] [--dtd-dir DTD]

Issue #5 asks to reuse anomalib's generators only if they are fast enough. This times, on the same batches:
- ours: `PseudoAnomalyGenerator` (the restoration stream's hybrid: CutPaste or Perlin blend, 50/50) and each of its
  two branches alone;
- anomalib 2.x: `PerlinAnomalyGenerator` (DRAEM-style Perlin blend, torch code on the image's device) and FoundAD's
  `CutPasteNormal` / `CutPasteScar` (the only CutPaste anomalib ships).
Without `--dtd-dir` both Perlin generators use their offline source (ours: procedural textures; anomalib's: the
Perlin noise itself). Besides images/s it prints what each generator returns, since the restoration stream needs
a mask per image (the refiner's Dice target) and a generator it can seed (resumable training).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from bench_common import machine_line, synchronizer, time_calls

from anomaly_zoo.methods.onenip.synthesis import PseudoAnomalyGenerator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--dtd-dir", default=None, help="DTD root (images/*/*.jpg) for both Perlin generators")
    args = parser.parse_args()

    from anomalib.data.utils.generators.perlin import PerlinAnomalyGenerator
    from anomalib.models.image.foundad.components.cutpaste import CutPasteNormal, CutPasteScar

    device = torch.device(args.device)
    sync = synchronizer(device)
    torch.manual_seed(0)
    images = torch.rand(args.batch, 3, args.size, args.size, device=device)
    gen = torch.Generator().manual_seed(0)

    ours = PseudoAnomalyGenerator(args.dtd_dir)
    ours_perlin = PseudoAnomalyGenerator(args.dtd_dir, cutpaste_probability=0.0)
    ours_cutpaste = PseudoAnomalyGenerator(args.dtd_dir, cutpaste_probability=1.0)
    dtd_images = f"{args.dtd_dir}/images" if args.dtd_dir else None
    theirs_perlin = PerlinAnomalyGenerator(anomaly_source_path=dtd_images, probability=1.0)
    cut_normal, cut_scar = CutPasteNormal(), CutPasteScar()

    def per_image(op: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], object]:
        return lambda: torch.stack([op(img) for img in images])

    rows = [
        ("ours: hybrid (CutPaste | Perlin, 50/50)", lambda: ours(images, gen), "image + mask, seeded generator"),
        ("ours: Perlin blend only", lambda: ours_perlin(images, gen), "image + mask, seeded generator"),
        ("ours: CutPaste only", lambda: ours_cutpaste(images, gen), "image + mask, seeded generator"),
        ("anomalib PerlinAnomalyGenerator", lambda: theirs_perlin(images), "image + mask, global RNG"),
        ("anomalib FoundAD CutPasteNormal", per_image(cut_normal), "image only (no mask), Python RNG"),
        ("anomalib FoundAD CutPasteScar", per_image(cut_scar), "image only (no mask), Python RNG"),
    ]
    print(machine_line(device))
    print(
        f"batch {args.batch} x 3 x {args.size} x {args.size}, {args.repeats} batches each, source: "
        f"{'DTD ' + args.dtd_dir if args.dtd_dir else 'offline (procedural / Perlin noise)'}"
    )
    print(f"{'generator':<42} {'ms/batch':>9} {'images/s':>9}  returns")
    for name, fn, returns in rows:
        seconds, _ = time_calls(fn, sync, args.repeats)
        print(f"{name:<42} {seconds * 1e3:9.1f} {args.batch / seconds:9.1f}  {returns}")


if __name__ == "__main__":
    main()
