"""Stable Diffusion as a backbone (DIVAD's `backbone=sd15|sd21_base|sd_tiny_random`): from the hub or a local
folder, or a tiny random stack for tests."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)


class StableDiffusionParts(nn.Module):
    """The four pieces DIVAD needs, however they were built (hub, local folder, or a test config)."""

    # diffusers' AutoencoderKL and UNet2DConditionModel, whose methods (encode, decode, enable_slicing, ...) are
    # called by name: to a type checker diffusers' __init__ exports torch-less dummy classes, so they are Any here.
    vae: Any
    unet: Any

    def __init__(self, vae: nn.Module, unet: nn.Module, text_encoder: nn.Module, tokenize: Callable, scheduler_config):
        super().__init__()
        self.vae, self.unet, self.text_encoder = vae, unet, text_encoder
        self.tokenize = tokenize  # list[str] -> LongTensor (N, L)
        self.scheduler_config = dict(scheduler_config)
        for module in (vae, unet, text_encoder):
            module.eval().requires_grad_(False)


class DiffusionWeightsError(RuntimeError):
    """Stable Diffusion weights were asked for and cannot be loaded."""


def _hf_tokenizer(tokenizer) -> Callable[[Sequence[str]], torch.Tensor]:
    def tokenize(prompts: Sequence[str]) -> torch.Tensor:
        return tokenizer(
            list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
            return_tensors="pt",
        ).input_ids  # fmt: skip

    return tokenize


def load_stable_diffusion(
    model_id: str,
    revision: str | None = None,
    dtype: str = "float32",
    local_files_only: bool = False,
    name: str = "",
) -> StableDiffusionParts:
    """VAE, UNet, text encoder, tokenizer and scheduler config from a hub id or a local diffusers folder."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    local = Path(model_id).expanduser().is_dir()
    kwargs: dict[str, Any] = {"revision": revision, "local_files_only": local_files_only or local}
    torch_dtype = getattr(torch, dtype)
    try:
        vae = AutoencoderKL.from_pretrained(model_id, subfolder="vae", torch_dtype=torch_dtype, **kwargs)
        unet = UNet2DConditionModel.from_pretrained(model_id, subfolder="unet", torch_dtype=torch_dtype, **kwargs)
        text_encoder = CLIPTextModel.from_pretrained(model_id, subfolder="text_encoder", torch_dtype=torch_dtype,
                                                     **kwargs)  # fmt: skip
        tokenizer = CLIPTokenizer.from_pretrained(model_id, subfolder="tokenizer", **kwargs)
        scheduler = DDIMScheduler.from_pretrained(model_id, subfolder="scheduler", **kwargs)
    except Exception as err:
        first = str(err).splitlines()[0] if str(err) else ""
        raise DiffusionWeightsError(
            f"could not load Stable Diffusion '{model_id}' ({type(err).__name__}: {first}). Download it where the "
            f"hub is reachable (huggingface-cli download {model_id}) and pass the folder: "
            "backbone.model_id=/path/to/stable-diffusion (a diffusers folder with vae/, unet/, text_encoder/, "
            "tokenizer/, scheduler/)"
        ) from err
    return StableDiffusionParts(vae, unet, text_encoder, _hf_tokenizer(tokenizer), scheduler.config)


def open_clip_tokenizer(context_length: int = 77) -> Callable[[Sequence[str]], torch.Tensor]:
    """CLIP BPE tokenizer from the vocabulary bundled in open_clip's wheel (same ids as SD's CLIPTokenizer)."""
    from open_clip.tokenizer import SimpleTokenizer, default_bpe

    if not Path(default_bpe()).is_file():  # pragma: no cover
        raise FileNotFoundError(default_bpe())
    simple = SimpleTokenizer(default_bpe())
    sot, eot = simple.encoder["<start_of_text>"], simple.encoder["<end_of_text>"]

    def tokenize(prompts: Sequence[str]) -> torch.Tensor:
        out = torch.full((len(prompts), context_length), eot, dtype=torch.long)
        for i, p in enumerate(prompts):
            ids = [sot, *simple.encode(p)[: context_length - 2], eot]
            out[i, : len(ids)] = torch.tensor(ids)
        return out

    return tokenize


def tiny_random_stable_diffusion(seed: int = 0, name: str = "sd_tiny_random") -> StableDiffusionParts:
    """A tiny SD stack with RANDOM weights, built from configs offline. For tests only: it warns loudly."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    message = "DIVAD is using a tiny Stable Diffusion with RANDOM weights (backbone=sd_tiny_random): test fixture only"
    warnings.warn(message, stacklevel=2)
    log.warning(message)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
    )  # fmt: skip
    vae = AutoencoderKL(
        block_out_channels=(16, 32, 32, 32), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1,
    )  # fmt: skip
    text_encoder = CLIPTextModel(
        CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=64, num_attention_heads=2,
                       num_hidden_layers=2, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407)
    )  # fmt: skip
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
        steps_offset=1, prediction_type="epsilon",
    )  # fmt: skip
    # diffusers' __init__ binds its torch-less dummy classes for type checkers (not nn.Modules, no `config`).
    return StableDiffusionParts(vae, unet, text_encoder, open_clip_tokenizer(), scheduler.config)  # type: ignore[arg-type, attr-defined]
