"""DIVAD's reconstruction: VAE encode → DDIM inversion → guided DDIM denoising → VAE decode.

Follows the DIVAD paper (Hicsonmez et al., "Training Free Zero-Shot Visual Anomaly Localization via Diffusion
Inversion") and its official code, github.com/giddyyupp/DIVAD @ 9acef11. No Lightning here.

Timestep bookkeeping is explicit: a schedule is two lists of `DDIMStep`s (UNet timestep, noise level from, noise
level to), built from diffusers' DDIM grid of the model's scheduler config ("leading" spacing, `steps_offset`).
- `paper` (default): one T=50 grid for both directions; the latent is inverted for the T'=10 needed steps
  (clean → t=1 → 21 → … → 181) and denoised from t=181 for the same 10 steps back to the clean end.
- `official`: what `ddim_inversion.py` of github.com/giddyyupp/DIVAD @ 9acef11 does (its own update loops, not
  diffusers' `step`), with its oddities kept on purpose: the clean latent is taken to sit at t=1 (no clean → t=1
  step); of the 50-grid inversion it keeps the latent at index `-(ss+1)` (t=161 for ss=40, i.e. 8 steps); it
  samples on a 100-step grid from index ss (t=591, 60 steps) and its last step goes t=1 → t=1 (prev_t is clamped
  to 1), a step that changes the latent only by float rounding but is run, as there.
The update is the deterministic DDIM step written out (epsilon, v or sample prediction), in the official loops'
operation order, so both schedules share one code path and the official one agrees with the script bit for bit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from anomaly_zoo.backbones.diffusion import StableDiffusionParts

log = logging.getLogger(__name__)

#: `DDIMStep.src`/`dst` value for the clean end of the chain: diffusers' initial/final_alpha_cumprod
#: (alphas_cumprod[0], or 1 when the scheduler config sets `set_alpha_to_one`).
CLEAN = -1
SCHEDULES = ("paper", "official")


@dataclass(frozen=True)
class DDIMStep:
    """UNet evaluated at `unet_t`; the latent moves from noise level alphas_cumprod[src] to alphas_cumprod[dst]."""

    unet_t: int
    src: int
    dst: int


@dataclass(frozen=True)
class InversionSchedule:
    """Which DDIM steps DIVAD runs. `kind`: paper | official (module docstring).

    paper: `num_steps` T is the grid of both directions, `start_steps` T' the steps taken each way.
    official: `num_steps` is the script's inversion grid (--nis 50), `sampling_grid` its sampling grid
    (--inf_step 100) and `start_steps` T' = nis − ss (its --ss 40 gives T' = 10; reading T' this way is ours: the
    paper's Table 5 does not say which flag it varied).
    """

    kind: str = "paper"
    num_steps: int = 50
    start_steps: int = 10
    sampling_grid: int = 100

    @classmethod
    def paper(cls, num_steps: int = 50, start_steps: int = 10) -> InversionSchedule:
        return cls("paper", num_steps, start_steps)

    @classmethod
    def official(cls, num_steps: int = 50, start_steps: int = 10, sampling_grid: int = 100) -> InversionSchedule:
        return cls("official", num_steps, start_steps, sampling_grid)

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ValueError(f"method.schedule={self.kind!r} is not one of {SCHEDULES}")
        if not 0 < self.start_steps <= self.num_steps:
            raise ValueError(f"method.start_steps={self.start_steps} must be in 1..num_steps={self.num_steps}")
        if self.kind == "official":
            ss = self.num_steps - self.start_steps
            if self.start_steps < 3 or ss >= self.sampling_grid:
                raise ValueError(
                    f"method.schedule=official: start_steps={self.start_steps} gives the script's --ss={ss}, which "
                    f"needs 3 <= start_steps (it keeps inversion latent -(ss+1) of nis-2) and ss < "
                    f"sampling_grid={self.sampling_grid}"
                )

    def steps(self, grid: Callable[[int], list[int]], train_steps: int) -> tuple[list[DDIMStep], list[DDIMStep]]:
        """(inversion, sampling) steps; `grid(n)` is the scheduler's descending n-step DDIM timesteps."""
        if self.kind == "paper":
            stride = train_steps // self.num_steps
            ascending = grid(self.num_steps)[::-1]
            inversion = [DDIMStep(t, t - stride if t >= stride else CLEAN, t) for t in ascending[: self.start_steps]]
            descending = grid(self.num_steps)[self.num_steps - self.start_steps :]
            sampling = [DDIMStep(t, t, t - stride if t >= stride else CLEAN) for t in descending]
            return inversion, sampling
        # official: ddim_inversion.py's invert() loop runs i = 1 .. nis-2 (its last iteration is skipped) with
        # current_t = max(0, t - 1000 // nis); the kept latent is intermediate_latents[-(ss+1)].
        nis, ss = self.num_steps, self.num_steps - self.start_steps
        stride = train_steps // nis
        ascending = grid(nis)[::-1]
        kept = (nis - 2) - (ss + 1)  # index into the nis-2 stored latents
        inversion = [DDIMStep(t, max(0, t - stride), t) for t in ascending[1 : kept + 2]]
        # sample(): i = ss .. inf_step-1 on the inf_step grid, prev_t = max(1, t - 1000 // inf_step)
        stride = train_steps // self.sampling_grid
        sampling = [DDIMStep(t, t, max(1, t - stride)) for t in grid(self.sampling_grid)[ss:]]
        return inversion, sampling


def ddim_update(
    latents: torch.Tensor,
    model_output: torch.Tensor,
    alpha_src: torch.Tensor,
    alpha_dst: torch.Tensor,
    prediction: str,
    inverse: bool = False,
) -> torch.Tensor:
    """Deterministic DDIM step (eta = 0) between two noise levels, either direction: predict the clean latent and the
    noise from the model output, then re-noise to `alpha_dst`. For epsilon models the arithmetic follows the official
    loops' operation order (sample(); invert() when `inverse`), so the results agree with them bit for bit."""
    if prediction == "epsilon":
        eps = model_output
        if inverse:
            return (latents - (1 - alpha_src).sqrt() * eps) * (alpha_dst.sqrt() / alpha_src.sqrt()) + (
                1 - alpha_dst
            ).sqrt() * eps
        x0 = (latents - (1 - alpha_src).sqrt() * eps) / alpha_src.sqrt()
    elif prediction == "v_prediction":
        x0 = alpha_src.sqrt() * latents - (1 - alpha_src).sqrt() * model_output
        eps = alpha_src.sqrt() * model_output + (1 - alpha_src).sqrt() * latents
    elif prediction == "sample":
        x0 = model_output
        eps = (latents - alpha_src.sqrt() * x0) / (1 - alpha_src).sqrt()
    else:
        raise ValueError(f"scheduler prediction_type={prediction!r} is not epsilon, v_prediction or sample")
    return alpha_dst.sqrt() * x0 + (1 - alpha_dst).sqrt() * eps


class DiffusionReconstructor(nn.Module):
    """Batched DIVAD reconstruction with classifier-free guidance in both directions."""

    alphas_cumprod: torch.Tensor  # a buffer (register_buffer in __init__), declared for the type checker

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
        from diffusers import DDIMScheduler

        self.parts = parts
        self.schedule = schedule
        self.guidance_scale = guidance_scale
        self.resolution = resolution
        self.sample_latent = sample_latent
        self.seed = seed
        config = {k: v for k, v in parts.scheduler_config.items() if not k.startswith("_")}
        grid_scheduler = DDIMScheduler.from_config(config)
        for key in ("clip_sample", "thresholding"):
            if grid_scheduler.config.get(key):
                raise ValueError(f"the diffusion model's scheduler config sets {key}=true, which DIVAD does not apply")
        self.prediction = grid_scheduler.config.prediction_type
        alphas = grid_scheduler.alphas_cumprod  # float32, as the official code reads them
        clean = torch.tensor(1.0) if grid_scheduler.config.set_alpha_to_one else alphas[0]
        self.register_buffer("alphas_cumprod", torch.cat([alphas, clean[None]]), persistent=False)  # [-1] = CLEAN

        def grid(n: int) -> list[int]:
            grid_scheduler.set_timesteps(n)
            return grid_scheduler.timesteps.tolist()

        self.inversion_steps, self.sampling_steps = schedule.steps(grid, grid_scheduler.config.num_train_timesteps)
        self.scaling_factor = float(getattr(parts.vae.config, "scaling_factor", 0.18215))
        self._text_cache: dict[str, torch.Tensor] = {}

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
        images = self.parts.vae.decode(1 / self.scaling_factor * latents).sample
        return (images / 2 + 0.5).clamp(0, 1)  # diffusers' decode_latents arithmetic (same rounding)

    def _guided_eps(self, latents: torch.Tensor, t: int, cond: torch.Tensor, uncond: torch.Tensor):
        timestep = torch.tensor(t, device=latents.device)
        if self.guidance_scale == 1.0:
            return self.parts.unet(latents, timestep, encoder_hidden_states=cond).sample
        both = self.parts.unet(
            torch.cat([latents, latents]), timestep, encoder_hidden_states=torch.cat([uncond, cond])
        ).sample
        eps_uncond, eps_cond = both.chunk(2)
        return eps_uncond + self.guidance_scale * (eps_cond - eps_uncond)

    def inversion_timesteps(self) -> list[int]:
        """The UNet timesteps of the inversion, in order."""
        return [s.unet_t for s in self.inversion_steps]

    def sampling_timesteps(self) -> list[int]:
        return [s.unet_t for s in self.sampling_steps]

    @torch.no_grad()
    def run_steps(self, latents: torch.Tensor, steps: Sequence[DDIMStep], cond, uncond, inverse: bool) -> torch.Tensor:
        alphas = self.alphas_cumprod.to(latents.device)
        for step in steps:
            out = self._guided_eps(latents, step.unet_t, cond, uncond)
            latents = ddim_update(latents, out, alphas[step.src], alphas[step.dst], self.prediction, inverse)
        return latents

    def invert(self, latents: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
        return self.run_steps(latents, self.inversion_steps, cond, uncond, inverse=True)

    def denoise(self, latents: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
        return self.run_steps(latents, self.sampling_steps, cond, uncond, inverse=False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """[0, 1] images at `resolution` → reconstructions at `resolution`, float in [0, 1]. Other sizes are resized
        here (bicubic); DIVAD passes the original file resized once instead (its `sd` input view)."""
        size = (self.resolution, self.resolution)
        if tuple(images.shape[-2:]) != size:
            images = nn.functional.interpolate(images, size=size, mode="bicubic", align_corners=False).clamp(0, 1)
        dtype = next(self.parts.unet.parameters()).dtype
        cond = self.text_embeddings(list(prompts), images.device).to(dtype)
        uncond = self.text_embeddings([""] * len(prompts), images.device).to(dtype)
        latents = self.encode(images.to(dtype))
        latents = self.denoise(self.invert(latents, cond, uncond), cond, uncond)
        return self.decode(latents).float()
