"""Write a diffusers SD pipeline as one original-layout (LDM / A1111) checkpoint file.

Why: single-file `.safetensors` checkpoints are how most SD weights circulate; the loader reads
them through diffusers' `from_single_file`. To test that path offline we need such a file for the
tiny model, so this module inverts diffusers' LDM -> diffusers key conversion (the mapping of
diffusers' `scripts/convert_diffusers_to_original_stable_diffusion.py`, Apache-2.0, generalised
here to any number of blocks and layers per block, read off the model's config).
"""

from __future__ import annotations

from pathlib import Path

import torch

RESNET_MAP = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
              ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection")]
VAE_RESNET_MAP = [("conv_shortcut", "nin_shortcut")]
VAE_ATTN_MAP = [("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")]


def _sub(rest: str, table) -> str:
    for a, b in table:
        if rest.startswith(a + "."):
            return b + rest[len(a):]
    return rest


def unet_key_to_ldm(key: str, cfg: dict) -> str:
    """Map one diffusers UNet2DConditionModel key to its LDM `model.diffusion_model.` key."""
    L = cfg["layers_per_block"]
    p = key.split(".")
    fixed = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    for a, b in fixed.items():
        if key.startswith(a + "."):
            return "model.diffusion_model." + b + key[len(a):]
    if p[0] == "down_blocks":
        i, kind, j, rest = int(p[1]), p[2], int(p[3]), ".".join(p[4:])
        if kind == "downsamplers":
            return f"model.diffusion_model.input_blocks.{(i + 1) * (L + 1)}.0.op.{'.'.join(p[5:])}"
        idx = 1 + i * (L + 1) + j
        sub = 0 if kind == "resnets" else 1
        return f"model.diffusion_model.input_blocks.{idx}.{sub}.{_sub(rest, RESNET_MAP) if sub == 0 else rest}"
    if p[0] == "mid_block":
        kind, j, rest = p[1], int(p[2]), ".".join(p[3:])
        pos = {("resnets", 0): 0, ("attentions", 0): 1, ("resnets", 1): 2}[(kind, j)]
        return f"model.diffusion_model.middle_block.{pos}.{_sub(rest, RESNET_MAP) if kind == 'resnets' else rest}"
    if p[0] == "up_blocks":
        i, kind, j, rest = int(p[1]), p[2], int(p[3]), ".".join(p[4:])
        has_attn = "CrossAttn" in cfg["up_block_types"][i]
        if kind == "upsamplers":
            return f"model.diffusion_model.output_blocks.{i * (L + 1) + L}.{2 if has_attn else 1}.{'.'.join(p[4:])}"
        idx = i * (L + 1) + j
        sub = 0 if kind == "resnets" else 1
        return f"model.diffusion_model.output_blocks.{idx}.{sub}.{_sub(rest, RESNET_MAP) if sub == 0 else rest}"
    raise KeyError(f"unmapped UNet key {key}")


def vae_key_to_ldm(key: str, n_blocks: int) -> str:
    """Map one diffusers AutoencoderKL key to its LDM `first_stage_model.` key."""
    p = key.split(".")
    out = key
    if p[1] == "down_blocks":
        i, kind = int(p[2]), p[3]
        if kind == "downsamplers":
            out = f"{p[0]}.down.{i}.downsample.{'.'.join(p[6:])}" if p[5] != "conv" else f"{p[0]}.down.{i}.downsample.conv.{'.'.join(p[6:])}"
        else:
            out = f"{p[0]}.down.{i}.block.{p[4]}.{_sub('.'.join(p[5:]), VAE_RESNET_MAP)}"
    elif p[1] == "up_blocks":
        i, kind = n_blocks - 1 - int(p[2]), p[3]
        if kind == "upsamplers":
            out = f"{p[0]}.up.{i}.upsample.{'.'.join(p[5:])}"
        else:
            out = f"{p[0]}.up.{i}.block.{p[4]}.{_sub('.'.join(p[5:]), VAE_RESNET_MAP)}"
    elif p[1] == "mid_block":
        if p[2] == "resnets":
            out = f"{p[0]}.mid.block_{int(p[3]) + 1}.{_sub('.'.join(p[4:]), VAE_RESNET_MAP)}"
        else:
            out = f"{p[0]}.mid.attn_1.{_sub('.'.join(p[4:]), VAE_ATTN_MAP)}"
    elif p[1] == "conv_norm_out":
        out = f"{p[0]}.norm_out.{'.'.join(p[2:])}"
    return "first_stage_model." + out


def to_ldm_state_dict(pipe) -> dict[str, torch.Tensor]:
    """All of a pipeline's UNet / VAE / text-encoder tensors under original SD key names."""
    sd: dict[str, torch.Tensor] = {}
    ucfg = dict(pipe.unet.config)
    for k, v in pipe.unet.state_dict().items():
        sd[unet_key_to_ldm(k, ucfg)] = v
    n_blocks = len(pipe.vae.config.block_out_channels)
    for k, v in pipe.vae.state_dict().items():
        nk = vae_key_to_ldm(k, n_blocks)
        # the LDM VAE mid attention uses 1x1 convs where diffusers uses linears
        if ".mid.attn_1." in nk and nk.endswith(".weight") and v.ndim == 2:
            v = v[:, :, None, None]
        sd[nk] = v
    for k, v in pipe.text_encoder.state_dict().items():
        if k.endswith("position_ids"):
            continue
        sd["cond_stage_model.transformer." + k] = v
    return {k: v.contiguous() for k, v in sd.items()}


def save_single_file(pipe, path: str | Path) -> Path:
    """Write the pipeline as one `.safetensors` checkpoint in the original SD layout."""
    from safetensors.torch import save_file

    from lcd.io.atomic import atomic_path

    with atomic_path(path) as tmp:
        save_file(to_ldm_state_dict(pipe), str(tmp))
    return Path(path)
