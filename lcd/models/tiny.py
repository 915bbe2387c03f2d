"""Tiny random-weight models of the real architectures, written in the real on-disk formats.

Why: no pretrained weights can be fetched here, yet every test and the demo must go through the
production loader. These builders mirror diffusers' `get_dummy_components` in its SD tests: the
same classes as SD1.5 (UNet2DConditionModel with cross-attention, AutoencoderKL with the x8
downsampling of SD, CLIPTextModel with CLIP's 49,408-token vocabulary, DDIM with SD's schedule),
shrunk in width and depth. SAM is built with segment_anything's own `_build_sam` (the function
behind `sam_model_registry`) with a narrow, shallow ViT encoder.

Layout written by `write_tiny_models(root)`:
    root/sd/            diffusers StableDiffusionPipeline folder (4-channel UNet)
    root/sd-inpaint/    same, 9-channel inpainting UNet
    root/sam/sam_vit_tiny.pth   segment_anything state dict
    root/clip/          transformers CLIPModel + CLIPProcessor folder
    root/dino/          transformers ViTModel (DINO ViT-S/16 layout) + ViTImageProcessor folder
    root/open_clip/     open_clip model: <ARCH>.json config + open_clip_model.safetensors
    root/sdxl/, root/sdxl-inpaint/, root/sdxl-single/tiny-sdxl.safetensors   tiny SDXL (lcd.models.sdxl_tiny)
"""

from __future__ import annotations

from pathlib import Path

import torch

from lcd.models.loader import TINY_SAM
from lcd.models.tokenizer import write_clip_tokenizer

CLIP_BOS, CLIP_EOS, CLIP_VOCAB = 49406, 49407, 49408
SD15_SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    prediction_type="epsilon",
)
TINY_SAM_FILE = "sam_vit_tiny.pth"


def tiny_unet(in_channels: int = 4, seed: int = 0):
    """UNet2DConditionModel shaped like SD1.5's (cross-attn down/up blocks, 2 layers per block)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=64,
        in_channels=in_channels,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )


def tiny_vae(seed: int = 0):
    """AutoencoderKL with SD's 4 blocks (x8 downsampling, 4 latent channels), narrow channels."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=512,
        scaling_factor=0.18215,
    )


def tiny_text_config(hidden: int = 32):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        bos_token_id=CLIP_BOS,
        eos_token_id=CLIP_EOS,
        pad_token_id=CLIP_EOS,
        hidden_size=hidden,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=CLIP_VOCAB,
        max_position_embeddings=77,
        projection_dim=hidden,
        hidden_act="quick_gelu",
    )


def tiny_text_encoder(seed: int = 0):
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    return CLIPTextModel(tiny_text_config())


def write_tiny_sd(out_dir: str | Path, in_channels: int = 4, seed: int = 0) -> Path:
    """Save a tiny StableDiffusionPipeline folder (safetensors) and return its path."""
    from diffusers import DDIMScheduler, StableDiffusionInpaintPipeline, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    out = Path(out_dir)
    tok_dir = write_clip_tokenizer(out / "_tokenizer_src")
    cls = StableDiffusionInpaintPipeline if in_channels == 9 else StableDiffusionPipeline
    pipe = cls(
        vae=tiny_vae(seed),
        text_encoder=tiny_text_encoder(seed),
        tokenizer=CLIPTokenizer.from_pretrained(tok_dir),
        unet=tiny_unet(in_channels, seed),
        scheduler=DDIMScheduler(**SD15_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out, safe_serialization=True)
    for f in sorted(tok_dir.iterdir()):
        f.unlink()
    tok_dir.rmdir()
    return out


def write_tiny_sam(out_dir: str | Path, seed: int = 0) -> Path:
    """Save a tiny SAM (segment_anything's classes, narrow ViT encoder) as a plain state dict."""
    from segment_anything.build_sam import _build_sam

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    sam = _build_sam(checkpoint=None, **TINY_SAM)
    path = out / TINY_SAM_FILE
    torch.save(sam.state_dict(), path)
    return path


def write_mobile_sam(out_dir: str | Path, seed: int = 0) -> Path:
    """Save MobileSAM (`sam_type: vit_t`) at full size with random weights, as the published
    `mobile_sam.pt` is stored: a plain state dict of 439 tensors (10.1M values, ~40 MB)."""
    from lcd.models.sam_builders import MOBILE_SAM_FILE, build_sam_vit_t

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    state = build_sam_vit_t().state_dict()
    for k, v in state.items():  # init leaves BN statistics at 0/1 and attention biases at 0: vary them
        if v.is_floating_point():
            noise = torch.randn_like(v) * 0.01
            v.add_(noise.abs() if k.endswith("running_var") else noise)
    path = out / MOBILE_SAM_FILE
    torch.save(state, path)
    return path


def write_tiny_clip(out_dir: str | Path, seed: int = 0) -> Path:
    """Save a tiny transformers CLIPModel (text + vision towers) with its processor."""
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTokenizer,
        CLIPVisionConfig,
    )

    out = Path(out_dir)
    torch.manual_seed(seed)
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
        image_size=224, patch_size=32, projection_dim=32,
    )
    config = CLIPConfig(
        text_config=tiny_text_config().to_dict(), vision_config=vision.to_dict(), projection_dim=32
    )
    model = CLIPModel(config)
    model.save_pretrained(out, safe_serialization=True)
    tok = CLIPTokenizer.from_pretrained(write_clip_tokenizer(out / "_tok"))
    proc = CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tok)
    proc.save_pretrained(out)
    for f in sorted((out / "_tok").iterdir()):
        f.unlink()
    (out / "_tok").rmdir()
    return out


def write_tiny_models(root: str | Path, seed: int = 0) -> dict[str, Path]:
    """Write every tiny model under root (idempotent: same seed, same bytes) and return paths."""
    root = Path(root)
    return {
        "sd": write_tiny_sd(root / "sd", 4, seed),
        "sd_inpaint": write_tiny_sd(root / "sd-inpaint", 9, seed),
        "sam": write_tiny_sam(root / "sam", seed),
        "clip": write_tiny_clip(root / "clip", seed),
        "dino": write_tiny_dino(root / "dino", seed),
        "open_clip": write_tiny_open_clip(root / "open_clip", seed),
        **write_tiny_sdxl_models(root, seed),
    }


def write_tiny_sdxl_models(root: str | Path, seed: int = 0) -> dict[str, Path]:
    """The tiny SDXL models (lcd.models.sdxl_tiny): folder, inpainting folder, single file."""
    from lcd.models.sdxl_tiny import write_tiny_sdxl, write_tiny_sdxl_single_file

    root = Path(root)
    return {"sdxl": write_tiny_sdxl(root / "sdxl", 4, seed),
            "sdxl_inpaint": write_tiny_sdxl(root / "sdxl-inpaint", 9, seed),
            "sdxl_single": write_tiny_sdxl_single_file(root / "sdxl-single", seed)}


def write_tiny_dino(out_dir: str | Path, seed: int = 0) -> Path:
    """Save a tiny transformers ViTModel shaped like facebook/dino-vits16 (patch 16, 224 px,
    [CLS] + pooler-free), narrow and shallow, with DINO's ImageNet-normalising processor."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    out = Path(out_dir)
    torch.manual_seed(seed)
    config = ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        image_size=224, patch_size=16, qkv_bias=True,
    )
    ViTModel(config, add_pooling_layer=False).save_pretrained(out, safe_serialization=True)
    ViTImageProcessor(
        do_resize=True, size={"height": 224, "width": 224}, resample=3,
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(out)
    return out


TINY_OPEN_CLIP_ARCH = "LCD-Tiny-ViT"
OPEN_CLIP_WEIGHTS = "open_clip_model.safetensors"
TINY_OPEN_CLIP = dict(
    embed_dim=32,
    quick_gelu=True,
    vision_cfg=dict(image_size=32, layers=1, width=32, head_width=16, patch_size=16),
    text_cfg=dict(context_length=77, vocab_size=CLIP_VOCAB, width=32, heads=4, layers=1),
)


def write_tiny_open_clip(out_dir: str | Path, seed: int = 0) -> Path:
    """Save a tiny open_clip CLIP (ViT + text transformer, CLIP's BPE vocabulary) as a folder.

    Layout `<ARCH>.json` (open_clip model config, registered with `open_clip.add_model_config`
    by the loader) + `open_clip_model.safetensors`: clip-retrieval reaches the same weights as
    `open_clip:<ARCH>/<abs path to the safetensors>` once the config is registered.
    """
    import json

    import open_clip
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg_path = out / f"{TINY_OPEN_CLIP_ARCH}.json"
    cfg_path.write_text(json.dumps(TINY_OPEN_CLIP, indent=2))
    open_clip.add_model_config(cfg_path)
    torch.manual_seed(seed)
    model = open_clip.create_model(TINY_OPEN_CLIP_ARCH, pretrained=None)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / OPEN_CLIP_WEIGHTS))
    return out
