"""Pseudo-anomalies for OneNIP's restoration stream, batched on the images' device (GPU when training on one).

Follows the official code's `hybrid` style (`datasets/cutpaste.py` of github.com/gaobb/OneNIP @ e93dec5): per image
a fair coin picks CutPaste (`binary`: a colour-jittered patch of 2-15 % area, or a thin rotated "scar" 2-16 px wide
and 10-25 px long, cut from the same image) or a DRAEM-style Perlin blend of a texture. Always applied. The official
code runs DRAEM's numpy / imgaug code per image in its data loader (its bottleneck); here every step is tensor code
on the batch's device. Written here rather than taken from anomalib (measured in `experiments/bench_synthesis.py`):
anomalib 2.x's `PerlinAnomalyGenerator` is torch code too and about as fast on the CPU, but it draws from the
global RNG (a resumed run could not continue the same sequence) and its only CutPaste (FoundAD's) returns no mask,
which the refiner's Dice loss needs.

Texture source: DTD (`dtd_dir/images/*/*.jpg`) when given, otherwise procedural textures generated here (fractal
Perlin noise, stripes and checkers in random colours), so training works offline.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import cast

import torch
import torch.nn.functional as F
from torchvision.io import ImageReadMode, decode_image


# Random draws come from a CPU generator (its state can be checkpointed and restored on any device) and stay on the
# CPU as Python numbers: a scalar moved to the GPU and read back would stall the stream at every draw. Only the
# per-pixel work runs on the images' device.
def _uniform(lo: float, hi: float, gen: torch.Generator) -> float:
    return torch.rand(1, generator=gen).item() * (hi - lo) + lo


def perlin_noise(size: tuple[int, int], res: tuple[int, int], gen: torch.Generator, device) -> torch.Tensor:
    """Gradient (Perlin) noise on a `size` grid with `res` periods per axis, values roughly in [-1, 1]."""
    h, w = size
    ry, rx = res
    ys = torch.linspace(0, ry, h + 1, device=device)[:-1]
    xs = torch.linspace(0, rx, w + 1, device=device)[:-1]
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    y0, x0 = gy.floor().long(), gx.floor().long()
    fy, fx = gy - y0, gx - x0
    angles = 2 * math.pi * torch.rand(ry + 1, rx + 1, generator=gen).to(device)
    grads = torch.stack([torch.cos(angles), torch.sin(angles)], dim=-1)

    def dot(dy: int, dx: int) -> torch.Tensor:
        g = grads[y0 + dy, x0 + dx]
        return g[..., 0] * (fy - dy) + g[..., 1] * (fx - dx)

    fade = lambda t: 6 * t**5 - 15 * t**4 + 10 * t**3  # noqa: E731
    uy, ux = fade(fy), fade(fx)
    top = torch.lerp(dot(0, 0), dot(0, 1), ux)
    bottom = torch.lerp(dot(1, 0), dot(1, 1), ux)
    return math.sqrt(2) * torch.lerp(top, bottom, uy)


def _perlin_mask(size: tuple[int, int], gen: torch.Generator, device) -> torch.Tensor:
    """Binary blob mask: Perlin noise with 2^U{1..5} periods per axis, thresholded at 0.5 (DRAEM)."""
    for _ in range(10):
        periods = tuple(int(2 ** torch.randint(1, 6, (1,), generator=gen).item()) for _ in range(2))
        res = cast(tuple[int, int], periods)
        noise = perlin_noise((max(size[0], 32), max(size[1], 32)), res, gen, device)
        mask = (F.interpolate(noise[None, None], size=size, mode="bilinear")[0, 0] > 0.5).float()
        if mask.sum() > 0:
            return mask
    return mask


def procedural_texture(size: tuple[int, int], gen: torch.Generator, device) -> torch.Tensor:
    """A random RGB texture in [0, 1]: fractal noise, stripes or checkers in two random colours."""
    h, w = size
    kind = int(torch.randint(3, (1,), generator=gen))
    if kind == 0:
        pattern = sum(perlin_noise((h, w), (2**o, 2**o), gen, device) / 2**o for o in range(1, 5) if 2**o <= min(h, w))
    else:
        yy, xx = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
        angle = _uniform(0, math.pi, gen)
        period = _uniform(4, 24, gen)
        u = (yy * math.cos(angle) + xx * math.sin(angle)) / period
        v = (-yy * math.sin(angle) + xx * math.cos(angle)) / period
        pattern = (
            torch.sin(2 * math.pi * u) if kind == 1 else torch.sign(torch.sin(math.pi * u) * torch.sin(math.pi * v))
        )
    pattern = (pattern - pattern.min()) / (pattern.max() - pattern.min() + 1e-6)
    c0, c1 = torch.rand(2, 3, 1, 1, generator=gen).to(device)
    return c0 * (1 - pattern) + c1 * pattern


class TextureSource:
    """DTD images when `dtd_dir` is given (error if it holds none), procedural textures otherwise."""

    def __init__(self, dtd_dir: str | None = None) -> None:
        self.files: list[Path] = []
        if dtd_dir:
            self.files = sorted(Path(dtd_dir).glob("images/*/*.jpg"))
            if not self.files:
                raise FileNotFoundError(
                    f"method.synthesis.dtd_dir={dtd_dir}: no images/*/*.jpg found (expected the DTD layout, "
                    "https://www.robots.ox.ac.uk/~vgg/data/dtd/); set it to null to use procedural textures"
                )

    def sample(self, size: tuple[int, int], gen: torch.Generator, device) -> torch.Tensor:
        if not self.files:
            return procedural_texture(size, gen, device)
        path = self.files[int(torch.randint(len(self.files), (1,), generator=gen))]
        img = decode_image(str(path), mode=ImageReadMode.RGB).float().div(255).to(device)
        tex = F.interpolate(img[None], size=size, mode="bilinear", antialias=True)[0]
        return _augment_texture(tex, gen)


def _augment_texture(tex: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A few of DRAEM's photometric ops (gamma, brightness, invert, flip, posterize), 3 at random."""
    ops = torch.randperm(5, generator=gen)[:3].tolist()
    for op in ops:
        if op == 0:
            tex = tex.clamp_min(1e-6) ** _uniform(0.5, 2.0, gen)
        elif op == 1:
            tex = tex * _uniform(0.7, 1.3, gen)
        elif op == 2:
            tex = 1 - tex
        elif op == 3:
            tex = tex.flip(-1)
        else:
            tex = torch.floor(tex * 8) / 8
    return tex.clamp(0, 1)


def _color_jitter(patch: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """ColorJitter(0.4, 0.4, 0.4, 0.1) on a (3, H, W) image in [0, 1] (hue as a small channel rotation)."""
    dev = patch.device
    patch = patch * _uniform(0.6, 1.4, gen)
    mean = patch.mean()
    patch = (patch - mean) * _uniform(0.6, 1.4, gen) + mean
    grey = patch.mean(0, keepdim=True)
    patch = (patch - grey) * _uniform(0.6, 1.4, gen) + grey
    hue = _uniform(-0.1, 0.1, gen) * 2 * math.pi
    # rotate chroma around the grey axis
    axis = torch.ones(3, device=dev) / math.sqrt(3)
    flat = patch.reshape(3, -1)
    cos, sin = math.cos(hue), math.sin(hue)
    cross = torch.linalg.cross(axis[:, None].expand_as(flat), flat, dim=0)
    rotated = flat * cos + cross * sin + axis[:, None] * (axis @ flat)[None] * (1 - cos)
    return rotated.reshape_as(patch).clamp(0, 1)


def _rotated_rect_mask(
    size: tuple[int, int], center: tuple[float, float], half: tuple[float, float], angle: float, device
) -> torch.Tensor:
    h, w = size
    yy, xx = torch.meshgrid(
        torch.arange(h, device=device, dtype=torch.float32),
        torch.arange(w, device=device, dtype=torch.float32),
        indexing="ij",
    )
    dy, dx = yy - center[0], xx - center[1]
    u = dx * math.cos(angle) + dy * math.sin(angle)
    v = -dx * math.sin(angle) + dy * math.cos(angle)
    return ((u.abs() <= half[1]) & (v.abs() <= half[0])).float()


def _cutpaste(img: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    _, h, w = img.shape
    dev = img.device
    if torch.rand(1, generator=gen).item() < 0.5:  # cutpaste: area 2-15 %, aspect (0.3,1) or (1,3.3)
        area = _uniform(0.02, 0.15, gen) * h * w
        aspect = _uniform(0.3, 1, gen) if torch.rand(1, generator=gen).item() < 0.5 else _uniform(1, 3.3, gen)
        ph = max(2, min(h - 1, round(math.sqrt(area * aspect))))
        pw = max(2, min(w - 1, round(math.sqrt(area / aspect))))
        angle = 0.0
    else:  # scar: width 2-16 px, length 10-25 px (at the official 224-px scale), rotation ±45°
        scale = h / 224
        pw = max(2, int(_uniform(2, 16, gen) * scale))
        ph = max(4, int(_uniform(10, 25, gen) * scale))
        angle = _uniform(-math.pi / 4, math.pi / 4, gen)
    src_y = int(torch.randint(0, h - ph + 1, (1,), generator=gen))
    src_x = int(torch.randint(0, w - pw + 1, (1,), generator=gen))
    dst_y = int(torch.randint(0, h - ph + 1, (1,), generator=gen))
    dst_x = int(torch.randint(0, w - pw + 1, (1,), generator=gen))
    # Content: the image shifted so the source patch lands on the destination, colour-jittered.
    shifted = torch.roll(img, shifts=(dst_y - src_y, dst_x - src_x), dims=(1, 2))
    center = (dst_y + (ph - 1) / 2, dst_x + (pw - 1) / 2)
    mask = _rotated_rect_mask((h, w), center, (ph / 2, pw / 2), angle, dev)
    content = _color_jitter(shifted, gen)
    return img * (1 - mask) + content * mask, mask


def _perlin_blend(
    img: torch.Tensor, textures: TextureSource, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    size = (img.shape[-2], img.shape[-1])
    mask = _perlin_mask(size, gen, img.device)
    tex = textures.sample(size, gen, img.device)
    beta = _uniform(0.0, 0.8, gen)
    return img * (1 - mask) + (1 - beta) * tex * mask + beta * img * mask, mask


class PseudoAnomalyGenerator:
    """Applies one pseudo-anomaly to every image of a [0, 1] batch; returns (images, masks (N, H, W))."""

    def __init__(self, dtd_dir: str | None = None, cutpaste_probability: float = 0.5) -> None:
        self.textures = TextureSource(dtd_dir)
        self.cutpaste_probability = cutpaste_probability

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        out, masks = torch.empty_like(images), images.new_zeros(images.shape[0], *images.shape[-2:])
        for i, img in enumerate(images):
            if torch.rand(1, generator=gen).item() < self.cutpaste_probability:
                out[i], masks[i] = _cutpaste(img, gen)
            else:
                out[i], masks[i] = _perlin_blend(img, self.textures, gen)
        return out.clamp(0, 1), masks
