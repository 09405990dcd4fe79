"""`method=divad`: training-free, zero-shot anomaly maps by diffusion inversion (evaluated with anomaly_zoo.test)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from anomaly_zoo.data.views import ImageView
from anomaly_zoo.methods.base import AnomalyMethod, MethodOutput
from anomaly_zoo.methods.components import BLUR_BORDERS
from anomaly_zoo.methods.divad.anomaly_map import FEATURE_INPUT
from anomaly_zoo.methods.divad.masks import MASK_SKIP_LISTS, MASKS, cutler_masks, foreground_from_features
from anomaly_zoo.methods.divad.pipeline import DiffusionReconstructor, InversionSchedule, StableDiffusionParts
from anomaly_zoo.methods.divad.torch_model import DIVADModel

#: PIL filter of the Stable Diffusion input: `Image.resize`'s default for RGB, which the official script uses.
SD_INPUT = "bicubic"


def humanize(category: str) -> str:
    """Folder names to words for the prompt: `metal_nut` → "metal nut"."""
    return category.replace("_", " ").strip()


class DIVAD(AnomalyMethod):
    def __init__(
        self,
        diffusion: StableDiffusionParts,
        feature_extractor: nn.Module,
        schedule: str = "paper",
        num_steps: int = 50,
        start_steps: int = 10,
        sampling_grid: int = 100,
        guidance_scale: float = 3.5,
        resolution: int = 512,
        sample_latent: bool = True,
        prompt_template: str = "An image of a {category}",
        humanize_prompt: bool = True,
        map_size: int = 256,
        mask: str = "none",
        mask_skip: str = "official",
        cutler_mask_dir: str | None = None,
        blur_sigma: float = 5.0,
        blur_border: str = "symmetric",
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
        if blur_border not in BLUR_BORDERS:
            raise ValueError(f"method.blur_border={blur_border!r} is not one of {BLUR_BORDERS}")
        if mask not in MASKS:
            raise ValueError(f"method.mask={mask!r} is not one of {MASKS}")
        if mask_skip not in MASK_SKIP_LISTS:
            raise ValueError(f"method.mask_skip={mask_skip!r} is not one of {sorted(MASK_SKIP_LISTS)}")
        if mask == "cutler" and not cutler_mask_dir:
            raise ValueError(
                "method.mask=cutler reads precomputed CutLER masks: set method.cutler_mask_dir=<folder> (README, "
                "DIVAD, object masks), or use method.mask=dino_foreground"
            )
        if mask == "cutler" and cutler_mask_dir and not Path(cutler_mask_dir).is_dir():  # (set: checked above)
            raise FileNotFoundError(f"method.cutler_mask_dir={cutler_mask_dir}: no such folder")
        plan = InversionSchedule(schedule, num_steps, start_steps, sampling_grid)  # validates the knobs
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
        self.reconstructor = DiffusionReconstructor(diffusion, plan, guidance_scale, resolution, sample_latent, seed)
        self.extractor = feature_extractor

    @property
    def requires_training(self) -> bool:
        return False

    def _object_masks(self, features: torch.Tensor, paths: list[str] | None) -> torch.Tensor:
        hp = self.hparams
        if hp.mask == "dino_foreground":
            return foreground_from_features(features, hp.map_size)
        if paths is None or len(paths) != features.shape[0]:
            raise ValueError(
                "method.mask=cutler looks up each image's CutLER mask by its file: predict_batch needs `paths` "
                "(anomaly_zoo.test and anomaly_zoo.predict pass them)"
            )
        root = self.test_context.root if self.test_context is not None else None  # None: predict's absolute paths
        return cutler_masks(paths, root, hp.cutler_mask_dir, hp.map_size).to(features.device)

    def prompt(self, category: str) -> str:
        template = self.hparams.prompt_template
        name = humanize(category) if self.hparams.humanize_prompt else category
        return template.format(category=name) if template else ""

    def input_views(self) -> dict[str, ImageView]:
        """The original file resized once for each network, as the official scripts read it: to the diffusion
        model's resolution (`sd`) and to the map size for the feature extractor (`dino`)."""
        hp = self.hparams
        return {"sd": ImageView(hp.resolution, SD_INPUT), "dino": ImageView(hp.map_size, FEATURE_INPUT)}

    @torch.no_grad()
    def predict_batch(
        self,
        images: torch.Tensor,
        categories: list[str],
        paths: list[str] | None = None,
        views: dict[str, torch.Tensor] | None = None,
    ) -> MethodOutput:
        """Without `views` (a direct call on tensors) the networks' inputs are resized from `images` instead, which
        approximates the file-based inputs the framework's data loaders give."""
        hp = self.hparams
        views = views or {}

        def object_masks(features: torch.Tensor) -> torch.Tensor | None:
            if hp.mask == "none":
                return None
            masks = self._object_masks(features, paths)
            skip = torch.tensor([c in MASK_SKIP_LISTS[hp.mask_skip] for c in categories], device=masks.device)
            return torch.where(skip[:, None, None], torch.ones_like(masks), masks)

        maps, scores = self.torch_model().predict(
            views.get("sd", images), views.get("dino", images), [self.prompt(c) for c in categories], object_masks
        )
        return {"anomaly_maps": maps, "pred_scores": scores}

    def torch_model(self) -> DIVADModel:
        """The inference network as one pure `nn.Module` (`forward(images, prompts) -> maps, scores`), sharing this
        module's diffusion model and feature extractor."""
        hp = self.hparams
        return DIVADModel(self.reconstructor, self.extractor, hp.map_size, hp.blur_sigma, hp.blur_border,
                          hp.score_kernel, hp.score_repeats)  # fmt: skip

    def result_metadata(self) -> dict[str, Any]:
        rec = self.reconstructor
        return {
            "schedule": self.hparams.schedule,
            "inversion_timesteps": rec.inversion_timesteps(),
            "inversion_end_timestep": rec.inversion_steps[-1].dst,
            "sampling_timesteps": rec.sampling_timesteps(),
            "sampling_start_timestep": rec.sampling_timesteps()[0],
            "sampling_steps": len(rec.sampling_steps),
            "latent": "seeded sample" if self.hparams.sample_latent else "mode",
            "mask": self.hparams.mask,
        }
