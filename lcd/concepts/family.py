"""A model family (SD1.5, SDXL) as one object: what a concept needs to know of each.

STYLE point 9: training, merge, validation and export ask the `Family` instead of branching on
"is this SDXL". A family knows
- its text encoders, in order: SD1.5 has one (CLIP ViT-L, 768); SDXL two (CLIP ViT-L, 768, then
  OpenCLIP ViT-bigG with projection, 1280), each with its own tokenizer, so a concept token is
  added to both and holds one embedding row per encoder;
- how a prompt becomes the UNet's conditioning: SD1.5 the last hidden state (B, 77, 768); SDXL
  the penultimate hidden states of both encoders concatenated (B, 77, 2048), every attn2's K/V
  input, plus the second encoder's pooled, projected output (B, 1280) and the six "time ids"
  (original size, crop top-left, target size) as `added_cond_kwargs` (diffusers'
  StableDiffusionXLPipeline.encode_prompt and _get_add_time_ids do the same);
- the file keys of its embeddings: ours ('text.embeddings', 'text_2.embeddings') and the
  A1111 / ComfyUI ones ('emb_params' for SD1.5; 'clip_l' and 'clip_g' for SDXL);
- what its kohya LoRA keys are called: sd-scripts trains SD1.x on the diffusers UNet (module
  paths: lora_unet_down_blocks_1_attentions_0_..._attn2_to_k) but SDXL on its own copy of
  Stability's UNet (LDM paths: lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k),
  and `ss_base_model_version`, which A1111 and ComfyUI read to tell them apart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from lcd.errors import ModelLoadError

KOHYA_PREFIX = "lora_unet_"


@dataclass(frozen=True)
class Family:
    name: str  # 'sd15' | 'sdxl'
    encoders: tuple[tuple[str, str], ...]  # (tokenizer attribute, text encoder attribute) of the pipeline
    embedding_keys: tuple[str, ...]  # concept-file key of each encoder's rows
    export_keys: tuple[str, ...]  # A1111 / ComfyUI embedding-file key of each encoder's rows
    penultimate: bool  # context from hidden_states[-2] (SDXL) or the last hidden state (SD1.5)
    pooled: bool  # the last encoder's pooled output and time ids condition the UNet
    ldm_lora_names: bool  # kohya module names in LDM layout (SDXL) or diffusers layout (SD1.x)
    base_version: str  # kohya's ss_base_model_version

    def text_encoders(self, pipe) -> list[tuple[Any, Any]]:
        """[(tokenizer, text encoder)] of `pipe`, in the order of `embedding_keys`."""
        return [(getattr(pipe, t), getattr(pipe, e)) for t, e in self.encoders]

    def kohya_name(self, module: str, layers_per_block: int = 2) -> str:
        """'down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k' -> kohya's module name
        ('lora_unet_down_blocks_1_..._to_k'; SDXL: 'lora_unet_input_blocks_4_1_..._to_k')."""
        path = diffusers_to_ldm(module, layers_per_block) if self.ldm_lora_names else module
        return KOHYA_PREFIX + path.replace(".", "_")


SD15 = Family("sd15", (("tokenizer", "text_encoder"),), ("text.embeddings",), ("emb_params",),
              penultimate=False, pooled=False, ldm_lora_names=False, base_version="sd_v1")
SDXL = Family("sdxl", (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2")),
              ("text.embeddings", "text_2.embeddings"), ("clip_l", "clip_g"),
              penultimate=True, pooled=True, ldm_lora_names=True, base_version="sdxl_base_v1-0")
FAMILIES = {f.name: f for f in (SD15, SDXL)}


def family_named(name: str, where: str = "concept") -> Family:
    if name not in FAMILIES:
        raise ModelLoadError(f"{where}: unknown model family {name!r} (expected one of {', '.join(FAMILIES)})",
                             item=where)
    return FAMILIES[name]


def family_of_unet(unet) -> Family:
    """SDXL's UNet is the one conditioned on pooled text and time ids (addition_embed_type 'text_time')."""
    return SDXL if getattr(unet.config, "addition_embed_type", None) == "text_time" else SD15


def family_of(pipe) -> Family:
    """The family of a diffusers pipeline: SDXL when it has a second text encoder."""
    return SDXL if getattr(pipe, "text_encoder_2", None) is not None else SD15


# --- kohya's SDXL module names (LDM layout of Stability's UNet, attention blocks only) ---------

_DOWN = re.compile(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)")
_MID = re.compile(r"mid_block\.attentions\.0\.(.+)")
_UP = re.compile(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)")
_INPUT = re.compile(r"input_blocks\.(\d+)\.1\.(.+)")
_MIDDLE = re.compile(r"middle_block\.1\.(.+)")
_OUTPUT = re.compile(r"output_blocks\.(\d+)\.1\.(.+)")


def diffusers_to_ldm(module: str, layers_per_block: int = 2) -> str:
    """An attention module's diffusers path -> its path in the original UNet: down block i's
    attention j is input_blocks.(1 + i(L+1) + j).1, the mid block's middle_block.1, up block i's
    output_blocks.(i(L+1) + j).1 (L = layers_per_block; up blocks hold L + 1 layers). The same
    index arithmetic as diffusers' `_maybe_map_sgm_blocks_to_diffusers`, inverted."""
    step = layers_per_block + 1
    if m := _DOWN.fullmatch(module):
        return f"input_blocks.{1 + int(m[1]) * step + int(m[2])}.1.{m[3]}"
    if m := _MID.fullmatch(module):
        return f"middle_block.1.{m[1]}"
    if m := _UP.fullmatch(module):
        return f"output_blocks.{int(m[1]) * step + int(m[2])}.1.{m[3]}"
    raise ModelLoadError(f"{module}: not an attention module of a UNet's down, mid or up blocks", item=module)


def ldm_to_diffusers(path: str, layers_per_block: int = 2) -> str | None:
    """Inverse of `diffusers_to_ldm` ('input_blocks.4.1.transformer_blocks.0.attn2.to_k' ->
    'down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k'); None for a non-attention path."""
    step = layers_per_block + 1
    if (m := _INPUT.fullmatch(path)) and int(m[1]) > 0:
        return f"down_blocks.{(int(m[1]) - 1) // step}.attentions.{(int(m[1]) - 1) % step}.{m[2]}"
    if m := _MIDDLE.fullmatch(path):
        return f"mid_block.attentions.0.{m[1]}"
    if m := _OUTPUT.fullmatch(path):
        return f"up_blocks.{int(m[1]) // step}.attentions.{int(m[1]) % step}.{m[2]}"
    return None


# --- prompts -> UNet conditioning -------------------------------------------------------------

@dataclass
class Conditioning:
    """What the UNet is conditioned on for a batch of B prompts."""

    context: torch.Tensor  # (B, L, D) encoder_hidden_states; D = sum of the encoders' widths for SDXL
    ids: torch.Tensor  # (B, L) the first tokenizer's ids (positions of tokens for merge)
    pooled: torch.Tensor | None = None  # (B, P) SDXL's text_embeds

    def added_cond(self, time_ids: torch.Tensor | None) -> dict[str, torch.Tensor] | None:
        """`added_cond_kwargs` for the UNet (None for SD1.5). time_ids (B, 6): original (h, w),
        crop top-left (y, x), target (h, w), as diffusers' SDXL trainers and pipelines pass them."""
        if self.pooled is None:
            return None
        if time_ids is None or time_ids.shape != (self.pooled.shape[0], 6):
            raise ModelLoadError(f"SDXL needs time ids of shape ({self.pooled.shape[0]}, 6), got "
                                 f"{None if time_ids is None else tuple(time_ids.shape)}", item="time_ids")
        return {"text_embeds": self.pooled, "time_ids": time_ids.to(self.pooled.device, self.pooled.dtype)}


def embedding_param_name(text_encoder) -> str:
    """The parameter name of a text encoder's token embedding ('text_model.embeddings.token_embedding.weight')."""
    emb = text_encoder.get_input_embeddings()
    return next(n for n, m in text_encoder.named_modules() if m is emb) + ".weight"


def encode_prompts(pipe, texts: Sequence[str], rows: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None
                   ) -> Conditioning:
    """The UNet conditioning of `texts` under `pipe`'s family. `rows` (optional, one per encoder):
    (token ids (n,), embedding rows (n, D_e)) spliced into that encoder's embedding matrix out of
    place, so the result is differentiable in the rows and no other row is touched (training)."""
    fam = family_of(pipe)
    contexts, ids0, pooled = [], None, None
    for k, (tok, te) in enumerate(fam.text_encoders(pipe)):
        ids = tok(list(texts), padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids.to(te.device)
        ids0 = ids if ids0 is None else ids0
        if rows is not None:
            tid, r = rows[k]
            base = te.get_input_embeddings().weight
            w = base.index_put((tid.to(base.device),), r.to(base.dtype))
            out = torch.func.functional_call(te, {embedding_param_name(te): w}, (ids,),
                                             {"output_hidden_states": fam.penultimate})
        else:
            out = te(ids, output_hidden_states=fam.penultimate)
        contexts.append(out.hidden_states[-2] if fam.penultimate else out[0])
        if fam.pooled and k == len(fam.encoders) - 1:
            pooled = out[0]  # CLIPTextModelWithProjection: text_embeds (B, P)
    return Conditioning(torch.cat(contexts, dim=-1), ids0, pooled)
