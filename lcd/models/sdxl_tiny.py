"""Tiny random-weight SDXL models of the real architecture, in the real on-disk layouts.

Why: no SDXL weights can be fetched here, yet SDXL loading, editing and training must be tested
through the production loader. The model is diffusers' own SDXL test configuration
(`tests/pipelines/stable_diffusion_xl/test_stable_diffusion_xl.py::get_dummy_components`): a UNet
with `addition_embed_type="text_time"` (pooled text + six time ids), linear-projection
transformers of depth (1, 2), CLIPTextModel + CLIPTextModelWithProjection, Euler with SDXL's
schedule. Three changes, each needed to be loadable like a real SDXL file: CLIP's 49,408-token
vocabulary (our offline BPE, lcd.models.tokenizer); encoder widths 32 and 48 (diffusers' single
file loader tells CLIP ViT-L from OpenCLIP bigG by width, so they must differ as 768 and 1280
do), hence a context of 80; SD's x8 four-block VAE (SDXL's is SD's, at scaling factor 0.13025).

The configs are those shipped in `lcd/models/configs/sdxl-tiny[-inpaint]/` (lcd.models.bundled),
so a tiny single file loads with no config setting, as a real SDXL file does with `sdxl/`.

Written by `lcd models tiny DIR` (lcd.models.tiny.write_tiny_models):
    DIR/sdxl/            diffusers StableDiffusionXLPipeline folder (4-channel UNet)
    DIR/sdxl-inpaint/    StableDiffusionXLInpaintPipeline folder (9-channel UNet)
    DIR/sdxl-single/tiny-sdxl.safetensors   the 4-channel model in generative-models' layout
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from lcd.models.bundled import CONFIGS
from lcd.models.tokenizer import write_clip_tokenizer
from lcd.models.trust import read_config

TINY_SDXL_FILE = "tiny-sdxl.safetensors"


def _config(kind: str, component: str, name: str = "config.json") -> dict:
    return {k: v for k, v in read_config(CONFIGS / kind / component / name).items() if not k.startswith("_")}


def tiny_sdxl_components(in_channels: int = 4, seed: int = 0) -> dict:
    """The components of a tiny SDXL pipeline (each model seeded with `seed`, as diffusers' tests
    seed each), tokenizers from our offline CLIP BPE; `tokenizer_2` pads with "!" as SDXL's does."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    kind = "sdxl-tiny-inpaint" if in_channels == 9 else "sdxl-tiny"
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(_config(kind, "unet"))
    torch.manual_seed(seed)
    vae = AutoencoderKL.from_config(_config(kind, "vae"))
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(**_config(kind, "text_encoder")))
    torch.manual_seed(seed)
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**_config(kind, "text_encoder_2")))
    scheduler = EulerDiscreteScheduler.from_config(_config(kind, "scheduler", "scheduler_config.json"))
    import tempfile

    with tempfile.TemporaryDirectory(prefix="lcd-tok-") as tmp:
        tok_dir = write_clip_tokenizer(Path(tmp) / "tok")
        tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
        tokenizer_2 = CLIPTokenizer.from_pretrained(tok_dir, pad_token="!")
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                tokenizer=tokenizer, tokenizer_2=tokenizer_2, scheduler=scheduler)


def tiny_sdxl_pipeline(in_channels: int = 4, seed: int = 0):
    """A tiny StableDiffusionXLPipeline (9 channels: StableDiffusionXLInpaintPipeline) in memory."""
    from diffusers import StableDiffusionXLInpaintPipeline, StableDiffusionXLPipeline

    if in_channels == 9:
        return StableDiffusionXLInpaintPipeline(**tiny_sdxl_components(9, seed), requires_aesthetics_score=False,
                                                force_zeros_for_empty_prompt=True)
    return StableDiffusionXLPipeline(**tiny_sdxl_components(4, seed), force_zeros_for_empty_prompt=True)


def write_tiny_sdxl(out_dir: str | Path, in_channels: int = 4, seed: int = 0) -> Path:
    """Save a tiny SDXL diffusers folder (safetensors) and return its path."""
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)  # same seed, same bytes: no file of an older layout left beside them
    tiny_sdxl_pipeline(in_channels, seed).save_pretrained(out, safe_serialization=True)
    return out


def write_tiny_sdxl_single_file(out_dir: str | Path, seed: int = 0) -> Path:
    """Save the tiny 4-channel SDXL as one `.safetensors` in generative-models' layout."""
    from lcd.models.ldm_format import save_single_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return save_single_file(tiny_sdxl_pipeline(4, seed), out / TINY_SDXL_FILE)
