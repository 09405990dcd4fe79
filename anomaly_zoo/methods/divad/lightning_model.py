"""`method=divad`: training-free, zero-shot anomaly maps by diffusion inversion (evaluated with anomaly_zoo.test)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch

from anomaly_zoo.backbones import FeatureExtractor
from anomaly_zoo.methods.base import AnomalyMethod, MethodOutput
from anomaly_zoo.methods.divad.anomaly_map import feature_dissimilarity, finish_map, repeated_average_max
from anomaly_zoo.methods.divad.masks import MASK_SKIP_LISTS, MASKS, cutler_masks, foreground_from_features
from anomaly_zoo.methods.divad.pipeline import DiffusionReconstructor, InversionSchedule, StableDiffusionParts

SCHEDULES = ("paper", "official")


def humanize(category: str) -> str:
    """Folder names to words for the prompt: `metal_nut` → "metal nut"."""
    return category.replace("_", " ").strip()


class DIVAD(AnomalyMethod):
    requires_training: ClassVar[bool] = False

    def __init__(
        self,
        diffusion: StableDiffusionParts,
        feature_extractor: FeatureExtractor,
        schedule: str = "paper",
        num_steps: int = 50,
        start_steps: int = 10,
        guidance_scale: float = 3.5,
        resolution: int = 512,
        sample_latent: bool = True,
        prompt_template: str = "An image of a {category}",
        map_size: int = 256,
        mask: str = "none",
        mask_skip: str = "official",
        cutler_mask_dir: str | None = None,
        blur_sigma: float = 5.0,
        score_kernel: int = 8,
        score_repeats: int = 8,
        seed: int = 0,
        channels_last: bool = False,
        compile_unet: bool = False,
        vae_slicing: bool = False,
        vae_tiling: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(diffusion, StableDiffusionParts):
            raise TypeError(
                f"method=divad needs a diffusion model as backbone (backbone=sd21_base or backbone=sd15), got "
                f"{type(diffusion).__name__}"
            )
        if schedule not in SCHEDULES:
            raise ValueError(f"method.schedule={schedule!r} is not one of {SCHEDULES}")
        if mask not in MASKS:
            raise ValueError(f"method.mask={mask!r} is not one of {MASKS}")
        if mask_skip not in MASK_SKIP_LISTS:
            raise ValueError(f"method.mask_skip={mask_skip!r} is not one of {sorted(MASK_SKIP_LISTS)}")
        if mask == "cutler" and not cutler_mask_dir:
            raise ValueError(
                "method.mask=cutler reads precomputed CutLER masks: set method.cutler_mask_dir=<folder> (README, "
                "DIVAD, object masks), or use method.mask=dino_foreground"
            )
        if mask == "cutler" and not Path(cutler_mask_dir).is_dir():
            raise FileNotFoundError(f"method.cutler_mask_dir={cutler_mask_dir}: no such folder")
        if not 0 < start_steps <= num_steps:
            raise ValueError(f"method.start_steps={start_steps} must be in 1..num_steps={num_steps}")
        self.save_hyperparameters(ignore=["diffusion", "feature_extractor"])
        # Speed/memory switches (GPU): channels_last UNet, torch.compile, VAE slicing/tiling when memory is short.
        if channels_last:
            diffusion.unet.to(memory_format=torch.channels_last)
        if compile_unet:
            diffusion.unet = torch.compile(diffusion.unet)
        if vae_slicing:
            diffusion.vae.enable_slicing()
        if vae_tiling:
            diffusion.vae.enable_tiling()
        plan = InversionSchedule.paper(num_steps, start_steps) if schedule == "paper" else InversionSchedule.official()
        self.reconstructor = DiffusionReconstructor(diffusion, plan, guidance_scale, resolution, sample_latent, seed)
        self.extractor = feature_extractor

    def _object_masks(self, features: torch.Tensor, paths: list[str] | None) -> torch.Tensor:
        hp = self.hparams
        if hp.mask == "dino_foreground":
            return foreground_from_features(features, hp.map_size)
        if paths is None or len(paths) != features.shape[0]:
            raise ValueError(
                "method.mask=cutler looks up each image's CutLER mask by its file: predict_batch needs `paths` "
                "(anomaly_zoo.test and anomaly_zoo.predict pass them)"
            )
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        root = getattr(datamodule, "root", None)
        return cutler_masks(paths, root, hp.cutler_mask_dir, hp.map_size).to(features.device)

    def prompt(self, category: str) -> str:
        template = self.hparams.prompt_template
        return template.format(category=humanize(category)) if template else ""

    @torch.no_grad()
    def predict_batch(
        self, images: torch.Tensor, categories: list[str], paths: list[str] | None = None
    ) -> MethodOutput:
        hp = self.hparams
        recons = self.reconstructor(images, [self.prompt(c) for c in categories])
        maps, features = feature_dissimilarity(self.extractor, images, recons, hp.map_size)
        masks = None
        if hp.mask != "none":
            masks = self._object_masks(features, paths)
            skip = torch.tensor([c in MASK_SKIP_LISTS[hp.mask_skip] for c in categories], device=masks.device)
            masks = torch.where(skip[:, None, None], torch.ones_like(masks), masks)
        maps = finish_map(maps, masks, hp.blur_sigma)
        return {"anomaly_maps": maps, "pred_scores": repeated_average_max(maps, hp.score_kernel, hp.score_repeats)}

    def result_metadata(self) -> dict[str, Any]:
        plan = self.reconstructor.schedule
        return {
            "schedule": self.hparams.schedule,
            "inversion_timesteps": self.reconstructor.inversion_timesteps().tolist(),
            "sampling_start_timestep": int(self.reconstructor.sampling_timesteps()[0]),
            "sampling_steps": len(self.reconstructor.sampling_timesteps()),
            "inversion_grid": plan.inversion_grid,
            "latent": "seeded sample" if self.hparams.sample_latent else "mode",
            "mask": self.hparams.mask,
        }
