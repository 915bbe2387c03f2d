"""Write a diffusers SD pipeline as one original-layout (LDM / A1111) checkpoint file.

Why: single-file `.safetensors` checkpoints are how most SD weights circulate; the loader reads
them through diffusers' `from_single_file`. To test that path offline we need such a file for the
tiny model, so this module inverts diffusers' LDM -> diffusers key conversion (the mapping of
diffusers' `scripts/convert_diffusers_to_original_stable_diffusion.py`, Apache-2.0, generalised
here to any number of blocks and layers per block, read off the model's config). SDXL pipelines
are written in the layout of Stability's `generative-models` (`sd_xl_base_1.0.safetensors`):
`conditioner.embedders.0.transformer.*` (CLIP ViT-L), `conditioner.embedders.1.model.*`
(OpenCLIP ViT-bigG), `model.diffusion_model.*` with `label_emb` for the pooled/time-id embedding.
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
             "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",  # SDXL
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
    second = getattr(pipe, "text_encoder_2", None)
    # SD1.x: cond_stage_model.transformer.*; SDXL (generative-models' conditioner): CLIP ViT-L
    # under embedders.0 with transformers' names, OpenCLIP ViT-bigG under embedders.1 in open_clip's
    prefix = "conditioner.embedders.0.transformer." if second is not None else "cond_stage_model.transformer."
    for k, v in pipe.text_encoder.state_dict().items():
        if not k.endswith("position_ids"):
            sd[prefix + k] = v
    if second is not None:
        sd.update(open_clip_state_dict(second, "conditioner.embedders.1.model."))
    return {k: v.contiguous() for k, v in sd.items()}


OPEN_CLIP_LAYER_MAP = [("self_attn.out_proj.", "attn.out_proj."), ("layer_norm1.", "ln_1."), ("layer_norm2.", "ln_2."),
                       ("mlp.fc1.", "mlp.c_fc."), ("mlp.fc2.", "mlp.c_proj.")]


def open_clip_state_dict(text_encoder, prefix: str) -> dict[str, torch.Tensor]:
    """A transformers CLIPTextModelWithProjection -> open_clip's text-tower keys under `prefix`:
    q/k/v projections stacked into `attn.in_proj_weight/bias` (3D, D), `text_projection` stored
    (D, P) as open_clip multiplies `x @ text_projection` (transformers' Linear holds (P, D)). The
    inverse of diffusers' `convert_open_clip_checkpoint`."""
    src = {k: v for k, v in text_encoder.state_dict().items() if not k.endswith("position_ids")}
    out = {prefix + "positional_embedding": src.pop("text_model.embeddings.position_embedding.weight"),
           prefix + "token_embedding.weight": src.pop("text_model.embeddings.token_embedding.weight"),
           prefix + "ln_final.weight": src.pop("text_model.final_layer_norm.weight"),
           prefix + "ln_final.bias": src.pop("text_model.final_layer_norm.bias"),
           prefix + "text_projection": src.pop("text_projection.weight").T}
    for i in range(text_encoder.config.num_hidden_layers):
        layer = f"text_model.encoder.layers.{i}."
        block = f"{prefix}transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            qkv = [src.pop(f"{layer}self_attn.{q}_proj.{kind}") for q in "qkv"]
            out[f"{block}attn.in_proj_{kind}"] = torch.cat(qkv)
        for k in [k for k in src if k.startswith(layer)]:
            out[block + _sub(k[len(layer):], [(a[:-1], b[:-1]) for a, b in OPEN_CLIP_LAYER_MAP])] = src.pop(k)
    if src:
        raise KeyError(f"unmapped text encoder keys {sorted(src)[:4]}")
    return out


def save_single_file(pipe, path: str | Path) -> Path:
    """Write the pipeline as one `.safetensors` checkpoint in the original SD layout."""
    from safetensors.torch import save_file

    from lcd.io.atomic import atomic_path

    with atomic_path(path) as tmp:
        save_file(to_ldm_state_dict(pipe), str(tmp))
    return Path(path)
