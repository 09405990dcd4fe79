"""DIVAD's reconstruction: VAE encode → DDIM inversion for T' steps → guided DDIM denoising → VAE decode.

Spec: shared/papers/divad.txt and shared/spec/reference_implementations.md §1. No Lightning here.

Timestep bookkeeping is explicit. Both grids are diffusers' DDIM grids ("leading" spacing, `steps_offset`):
- paper reading (default): inversion and sampling on the same T=50 grid; the latent is inverted for T'=10 steps
  (t = 1 → 21 → … → 181) and denoised from t=181 for the same 10 steps. Only the needed inversion steps run.
- official script (`method.schedule=official`): inversion on a 50-step grid up to t=161, sampling on a
  100-step grid from index 40 (t=591, 60 steps): the noise level of the latent and the sampler's start do not match;
  offered to compare with the published numbers.
The update rules are diffusers' `DDIMInverseScheduler` / `DDIMScheduler` steps (tests check them against the DDIM
formula), so epsilon and v-prediction models are both handled correctly.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InversionSchedule:
    """inversion_grid steps, of which the first inversion_steps run; sampling on sampling_grid from sampling_start."""

    inversion_grid: int = 50
    inversion_steps: int = 10
    sampling_grid: int = 50
    sampling_start: int = 40  # index into the descending sampling timesteps

    @classmethod
    def paper(cls, num_steps: int = 50, start_steps: int = 10) -> InversionSchedule:
        return cls(num_steps, start_steps, num_steps, num_steps - start_steps)

    @classmethod
    def official(cls) -> InversionSchedule:
        # The official script keeps its 8th inversion latent (t=161); diffusers' inverse grid starts at t=1, so
        # reaching t=161 takes 9 steps here. Sampling: 100-step grid from index 40 (t=591), 60 steps.
        return cls(inversion_grid=50, inversion_steps=9, sampling_grid=100, sampling_start=40)


class StableDiffusionParts(nn.Module):
    """The four pieces DIVAD needs, however they were built (hub, local folder, or a test config)."""

    def __init__(self, vae: nn.Module, unet: nn.Module, text_encoder: nn.Module, tokenize: Callable, scheduler_config):
        super().__init__()
        self.vae, self.unet, self.text_encoder = vae, unet, text_encoder
        self.tokenize = tokenize  # list[str] -> LongTensor (N, L)
        self.scheduler_config = dict(scheduler_config)
        for module in (vae, unet, text_encoder):
            module.eval().requires_grad_(False)


class DiffusionReconstructor(nn.Module):
    """Batched DIVAD reconstruction with classifier-free guidance in both directions."""

    def __init__(
        self,
        parts: StableDiffusionParts,
        schedule: InversionSchedule,
        guidance_scale: float = 3.5,
        resolution: int = 512,
        sample_latent: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        from diffusers import DDIMInverseScheduler, DDIMScheduler

        self.parts = parts
        self.schedule = schedule
        self.guidance_scale = guidance_scale
        self.resolution = resolution
        self.sample_latent = sample_latent
        self.seed = seed
        config = {k: v for k, v in parts.scheduler_config.items() if not k.startswith("_")}
        self.sampler = DDIMScheduler.from_config(config)
        accepted = inspect.signature(DDIMInverseScheduler.__init__).parameters
        self.inverter = DDIMInverseScheduler.from_config({k: v for k, v in config.items() if k in accepted})
        self.scaling_factor = float(getattr(parts.vae.config, "scaling_factor", 0.18215))
        self._text_cache: dict[str, torch.Tensor] = {}
        self._check_schedule()

    def _check_schedule(self) -> None:
        s = self.schedule
        if not 0 < s.inversion_steps <= s.inversion_grid or not 0 <= s.sampling_start < s.sampling_grid:
            raise ValueError(f"invalid inversion schedule {s}")

    # ------------------------------------------------------------------ pieces
    @torch.no_grad()
    def text_embeddings(self, prompts: Sequence[str], device) -> torch.Tensor:
        """Embeddings per prompt, computed once per distinct prompt (i.e. once per category) and cached."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
        if missing:
            ids = self.parts.tokenize(missing).to(device)
            emb = self.parts.text_encoder(ids)[0]
            self._text_cache.update(zip(missing, emb, strict=True))
        return torch.stack([self._text_cache[p].to(device) for p in prompts])

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] images at `resolution` → scaled latents (seeded posterior sample, or its mode)."""
        posterior = self.parts.vae.encode(images * 2 - 1).latent_dist
        latents = posterior.mean
        if self.sample_latent:
            # One seeded noise draw shared by every image: a sample that does not depend on the batch an image
            # lands in (so batch size and data-parallel sharding do not change results).
            gen = torch.Generator().manual_seed(self.seed)
            noise = torch.randn((1, *latents.shape[1:]), generator=gen).to(latents)
            latents = latents + posterior.std * noise
        return latents * self.scaling_factor

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        images = self.parts.vae.decode(latents / self.scaling_factor).sample
        return ((images + 1) / 2).clamp(0, 1)

    def _guided_eps(self, latents: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor):
        if self.guidance_scale == 1.0:
            return self.parts.unet(latents, t, encoder_hidden_states=cond).sample
        both = self.parts.unet(torch.cat([latents, latents]), t, encoder_hidden_states=torch.cat([uncond, cond])).sample
        eps_uncond, eps_cond = both.chunk(2)
        return eps_uncond + self.guidance_scale * (eps_cond - eps_uncond)

    def inversion_timesteps(self) -> torch.Tensor:
        self.inverter.set_timesteps(self.schedule.inversion_grid)
        return self.inverter.timesteps[: self.schedule.inversion_steps]

    def sampling_timesteps(self) -> torch.Tensor:
        self.sampler.set_timesteps(self.schedule.sampling_grid)
        return self.sampler.timesteps[self.schedule.sampling_start :]

    @torch.no_grad()
    def invert(self, latents: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
        for t in self.inversion_timesteps():
            eps = self._guided_eps(latents, t, cond, uncond)  # evaluated at the target t, as DDIM inversion does
            latents = self.inverter.step(eps, t, latents).prev_sample
        return latents

    @torch.no_grad()
    def denoise(self, latents: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
        for t in self.sampling_timesteps():
            eps = self._guided_eps(latents, t, cond, uncond)
            latents = self.sampler.step(eps, t, latents, eta=0.0).prev_sample
        return latents

    @torch.no_grad()
    def forward(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """[0, 1] images (any size) → reconstructions at `resolution`."""
        size = (self.resolution, self.resolution)
        if tuple(images.shape[-2:]) != size:
            images = nn.functional.interpolate(images, size=size, mode="bicubic", align_corners=False).clamp(0, 1)
        dtype = next(self.parts.unet.parameters()).dtype
        cond = self.text_embeddings(list(prompts), images.device).to(dtype)
        uncond = self.text_embeddings([""] * len(prompts), images.device).to(dtype)
        latents = self.encode(images.to(dtype))
        latents = self.denoise(self.invert(latents, cond, uncond), cond, uncond)
        return self.decode(latents).float()
