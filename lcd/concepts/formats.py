"""State dicts in the layouts other tools load: kohya LoRA, LyCORIS 'full', A1111 embeddings.

All in memory (tensors in, dicts of tensors out); `lcd.concepts.export` writes them.

kohya LoRA (sd-scripts, SD1.x trains on the diffusers UNet so its names are diffusers module
paths): per module `lora_unet_<path with . -> _>.lora_down.weight` (r, in), `.lora_up.weight`
(out, r) and `.alpha` (scalar); a loader adds (alpha / r) * up @ down. Read by A1111's Lora
extension, ComfyUI's comfy/lora.py and diffusers' `load_lora_weights`
(`_convert_non_diffusers_lora_to_diffusers`).

LyCORIS 'full': `<same name>.diff` = W - W0 (out, in), added as is (no alpha, no scale), read by
A1111's extensions-builtin/Lora/network_full.py and ComfyUI's comfy/lora.py ("diff" patches).
Where each reader takes these keys is cited in tests/lcd/concepts/test_formats.py.

A1111 textual inversion: a .safetensors file with one tensor (n_vectors, D); the embedding's
trigger word is the file name without extension.
"""

from __future__ import annotations

import torch

from lcd.concepts.io import Concept
from lcd.concepts.lowrank import Factors, factorize

KOHYA_PREFIX = "lora_unet_"
EMBEDDING_KEY = "emb_params"  # the key A1111-trained safetensors embeddings carry; ComfyUI looks for it too


def kohya_name(module: str) -> str:
    """'down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k' -> 'lora_unet_down_blocks_1_..._to_k'."""
    return KOHYA_PREFIX + module.replace(".", "_")


def lora_factors(concept: Concept, deltas: dict[str, torch.Tensor]) -> dict[str, tuple[Factors, float]]:
    """{module: (factors, alpha)} for a kohya file: a low-rank concept's own factors with
    alpha = lora_scale * r (so the reader's alpha / r is our scale exactly; a trained LoRA's
    configured alpha is written as is); a full K/V concept is factorized at full rank (exact to
    float32 rounding; compress first for a small file). `deltas` from `kv_deltas`."""
    out: dict[str, tuple[Factors, float]] = {}
    alpha_cfg = (concept.card.get("config") or {}).get("lora_alpha") if concept.method == "lora" else None
    for m in sorted(deltas):
        if concept.lowrank:
            down, up = concept.unet[f"{m}.lora_A"].float(), concept.unet[f"{m}.lora_B"].float()
            r = down.shape[0]
            alpha = float(alpha_cfg) if alpha_cfg is not None and float(alpha_cfg) / r == concept.lora_scale \
                else concept.lora_scale * r
            out[m] = (Factors(up=up, down=down, energy=1.0), alpha)
        else:
            f = factorize(deltas[m], rank=min(deltas[m].shape), item=f"{concept.name}: {m}")
            out[m] = (f, float(f.rank))
    return out


def kohya_state_dict(factors: dict[str, tuple[Factors, float]], dtype=torch.float32) -> dict[str, torch.Tensor]:
    """{module: (factors, alpha)} -> kohya keys; alpha as a 0-d float32 tensor (as sd-scripts saves)."""
    sd: dict[str, torch.Tensor] = {}
    for m, (f, alpha) in factors.items():
        n = kohya_name(m)
        sd[f"{n}.lora_down.weight"] = f.down.to(dtype).contiguous()
        sd[f"{n}.lora_up.weight"] = f.up.to(dtype).contiguous()
        sd[f"{n}.alpha"] = torch.tensor(alpha, dtype=torch.float32)
    return sd


def lycoris_full_state_dict(deltas: dict[str, torch.Tensor], dtype=torch.float32) -> dict[str, torch.Tensor]:
    """{module: W - W0 (out, in)} -> {'lora_unet_<module>.diff': (out, in)}."""
    return {f"{kohya_name(m)}.diff": d.to(dtype).contiguous() for m, d in sorted(deltas.items())}


def a1111_embedding(rows: torch.Tensor) -> dict[str, torch.Tensor]:
    """One token's embedding rows (n, D) or (D,) -> the single-tensor dict A1111 and ComfyUI read."""
    return {EMBEDDING_KEY: rows.detach().float().reshape(-1, rows.shape[-1]).contiguous()}


def embedding_name(token: str) -> str:
    """A1111's trigger word for a token: '[P]' -> 'P' (A1111 prompts read [..] as de-emphasis)."""
    return token.strip("[]")
