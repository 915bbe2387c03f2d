"""Stable Diffusion 1.5 with random weights, written as a diffusers pipeline folder.

Why: speed does not depend on weight values, and no pretrained weights can be fetched on the
benchmark machines, so a folder with SD1.5's exact architecture (UNet 859,520,964 parameters,
CLIP ViT-L/14 text encoder 123,060,480, SD's x8 AutoencoderKL), CLIP's real BPE tokenizer and
SD1.5's PNDM scheduler times the real thing. It loads through the production loader
(`lcd.models.loader.load_sd_pipeline`) like the hub's `stable-diffusion-v1-5` folder.
Images it makes are noise.

    python bench/sd15_random.py OUT_DIR [--dtype float16] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.kv_params import SD15_UNET  # noqa: E402

# SD1.5's vae/config.json (stable-diffusion-v1-5/stable-diffusion-v1-5)
SD15_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, act_fn="silu",
    norm_num_groups=32, sample_size=512, scaling_factor=0.18215,
)
# openai/clip-vit-large-patch14's text tower, as SD1.5's text_encoder/config.json gives it
# (token ids 0/1/2 as shipped there; the pooled output is not used by SD)
SD15_TEXT = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=768,
    bos_token_id=0, eos_token_id=2, pad_token_id=1,
)
# SD1.5's scheduler/scheduler_config.json: PNDM (PLMS only), steps_offset 1
SD15_PNDM = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1, prediction_type="epsilon",
)


def sd15_configs() -> dict[str, dict]:
    """{"unet", "vae", "text_encoder", "scheduler"}: constructor kwargs of each component (copies)."""
    return {"unet": dict(SD15_UNET), "vae": dict(SD15_VAE), "text_encoder": dict(SD15_TEXT),
            "scheduler": dict(SD15_PNDM)}


def build_sd15_random(tokenizer_dir: str | Path, dtype: str = "float16", seed: int = 0):
    """A StableDiffusionPipeline of SD1.5's architecture, PyTorch/transformers default init under
    `seed`, cast to `dtype`; the tokenizer is read from `tokenizer_dir` (a CLIPTokenizer folder)."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from lcd.models.loader import to_dtype

    cfg = sd15_configs()
    torch_dtype = to_dtype(dtype)
    torch.manual_seed(seed)
    return StableDiffusionPipeline(
        vae=AutoencoderKL(**cfg["vae"]).to(torch_dtype),
        text_encoder=CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"])).to(torch_dtype),
        tokenizer=CLIPTokenizer.from_pretrained(str(tokenizer_dir)),
        unet=UNet2DConditionModel(**cfg["unet"]).to(torch_dtype),
        scheduler=PNDMScheduler(**cfg["scheduler"]),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def write_sd15_random(out_dir: str | Path, dtype: str = "float16", seed: int = 0) -> Path:
    """Write the folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/;
    safetensors in `dtype`: ~2.1 GB in float16, ~4.3 GB in float32) and return its path."""
    from lcd.models.tokenizer import write_clip_tokenizer

    out = Path(out_dir)
    tok_dir = write_clip_tokenizer(out / "tokenizer")  # save_pretrained rewrites it in place
    pipe = build_sd15_random(tok_dir, dtype, seed)
    pipe.save_pretrained(out, safe_serialization=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(write_sd15_random(args.out_dir, args.dtype, args.seed))


if __name__ == "__main__":
    main()
