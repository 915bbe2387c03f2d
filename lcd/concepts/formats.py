"""State dicts in the layouts other tools load: kohya LoRA, LyCORIS 'full', A1111 embeddings.

All in memory (tensors in, dicts of tensors out); `lcd.concepts.export` writes them.

kohya LoRA (sd-scripts, SD1.x trains on the diffusers UNet so its names are diffusers module
paths): per module `lora_unet_<path with . -> _>.lora_down.weight` (r, in), `.lora_up.weight`
(out, r) and `.alpha` (scalar); a loader adds (alpha / r) * up @ down. We write one alpha for
all modules and fold each module's ratio into its up weights (`lora_factors`): diffusers reads a
single alpha per file. Read by A1111's Lora extension, ComfyUI's comfy/lora.py, sd-scripts and
diffusers' `load_lora_weights` (`_convert_non_diffusers_lora_to_diffusers`); their arithmetic is
reimplemented in tests/lcd/concepts/test_reader_arithmetic.py.

LyCORIS 'full': `<same name>.diff` = W - W0 (out, in), added as is (no alpha, no scale), read by
A1111's extensions-builtin/Lora/network_full.py and ComfyUI's comfy/lora.py ("diff" patches).
Where each reader takes these keys is cited in tests/lcd/concepts/test_formats.py.

A1111 textual inversion: a .safetensors file with one tensor (n_vectors, D); the embedding's
trigger word is the file name without extension. SDXL (A1111 and ComfyUI alike): one file with
'clip_l' (n_vectors, 768) and 'clip_g' (n_vectors, 1280), a row set per text encoder; diffusers
reads it as two load_textual_inversion calls, one per encoder (`text_encoder=`, `tokenizer=`).

SDXL LoRAs: sd-scripts trains SDXL on its own copy of Stability's UNet, so its module names are
LDM paths (lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k; lcd.concepts.family
maps them); `name` below is the family's naming, SD1.x's by default.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable, Sequence

import torch

from lcd.concepts.io import Concept
from lcd.concepts.lowrank import Factors

KOHYA_PREFIX = "lora_unet_"
EMBEDDING_KEY = "emb_params"  # the key A1111-trained safetensors embeddings carry; ComfyUI looks for it too


def kohya_name(module: str) -> str:
    """'down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k' -> 'lora_unet_down_blocks_1_..._to_k'."""
    return KOHYA_PREFIX + module.replace(".", "_")


def common_alpha(factors: dict[str, Factors], scale: float, alpha_cfg: float | None = None) -> float:
    """The one alpha written for every module: `alpha_cfg` (a trained LoRA's own) when it gives
    `scale` at the common rank, else scale * the most common rank (ties: the largest), as float32
    stores it. diffusers applies a single lora_alpha to a whole file (its `alpha_pattern` misses
    kohya module names), so per-module alphas would be read wrong there."""
    ranks = Counter(f.rank for f in factors.values())
    r = max(ranks, key=lambda k: (ranks[k], k)) if ranks else 1
    alpha = float(alpha_cfg) if alpha_cfg is not None and len(ranks) == 1 and float(alpha_cfg) / r == scale \
        else scale * r
    alpha = float(torch.tensor(alpha, dtype=torch.float32))
    return alpha if alpha > 0 else float(r)  # sd-scripts reads alpha 0 as "alpha = rank"


def fold_scale(factors: dict[str, Factors], scale: float, alpha: float) -> dict[str, Factors]:
    """Each module's up weights times scale * r / alpha, so that a reader's alpha / r * up @ down
    is scale * (the original up @ down) whatever the module's rank r (computed in float64)."""
    out = {}
    for m, f in factors.items():
        k = scale * f.rank / alpha
        up = f.up if k == 1.0 else (f.up.double() * k).float().contiguous()
        out[m] = Factors(up=up, down=f.down, energy=f.energy)
    return out


def full_rank_factors(delta: torch.Tensor) -> Factors:
    """`delta` (out, in) as exact factors of rank min(out, in): up = I, down = delta when out <= in,
    else up = delta, down = I. No SVD: every reader's up @ down gives `delta` bit for bit, and it
    costs nothing at SD1.5's 1280 x 768 layers."""
    d = delta.float().contiguous()
    out_dim, in_dim = d.shape
    if out_dim <= in_dim:
        return Factors(up=torch.eye(out_dim), down=d, energy=1.0)
    return Factors(up=d, down=torch.eye(in_dim), energy=1.0)


def lora_factors(concept: Concept, deltas: dict[str, torch.Tensor]) -> dict[str, tuple[Factors, float]]:
    """{module: (factors, alpha)} for a kohya file, one alpha for all modules (`common_alpha`) with
    each module's own scale folded into its up weights (`fold_scale`), so every reader
    (sd-scripts, A1111, ComfyUI, LyCORIS, diffusers) adds exactly the concept's W - W0 at
    strength 1.0. A low-rank concept keeps its factors; a full K/V concept is factorized at full
    rank (`full_rank_factors`, exact; compress first for a small file). `deltas` from `kv_deltas`."""
    alpha_cfg = (concept.card.get("config") or {}).get("lora_alpha") if concept.method == "lora" else None
    raw: dict[str, Factors] = {}
    for m in sorted(deltas):
        if concept.lowrank:
            raw[m] = Factors(up=concept.unet[f"{m}.lora_B"].float(), down=concept.unet[f"{m}.lora_A"].float(), energy=1.0)
        else:
            raw[m] = full_rank_factors(deltas[m])
    scale = float(concept.lora_scale) if concept.lowrank else 1.0
    alpha = common_alpha(raw, scale, alpha_cfg if isinstance(alpha_cfg, (int, float)) else None)
    return {m: (f, alpha) for m, f in fold_scale(raw, scale, alpha).items()}


def reader_delta(sd: dict[str, torch.Tensor], name: str, strength: float = 1.0) -> torch.Tensor:
    """What sd-scripts' merge_to, A1111's network_lora and ComfyUI's calculate_weight add for
    kohya module `name`: strength * (alpha / rank) * up @ down (alpha absent or 0: rank), in
    float32 as they compute it (float64 would be ~10x slower at SD1.5's 1280 x 768 layers)."""
    down, up = sd[f"{name}.lora_down.weight"].float(), sd[f"{name}.lora_up.weight"].float()
    a = sd.get(f"{name}.alpha")
    alpha = float(a) if a is not None and float(a) != 0 else float(down.shape[0])
    return (strength * (alpha / down.shape[0])) * (up @ down)


def kohya_state_dict(factors: dict[str, tuple[Factors, float]], dtype=torch.float32,
                     name: Callable[[str], str] = kohya_name) -> dict[str, torch.Tensor]:
    """{module: (factors, alpha)} -> kohya keys; alpha as a 0-d float32 tensor (as sd-scripts saves)."""
    sd: dict[str, torch.Tensor] = {}
    for m, (f, alpha) in factors.items():
        n = name(m)
        sd[f"{n}.lora_down.weight"] = f.down.to(dtype).contiguous()
        sd[f"{n}.lora_up.weight"] = f.up.to(dtype).contiguous()
        sd[f"{n}.alpha"] = torch.tensor(alpha, dtype=torch.float32)
    return sd


def lycoris_full_state_dict(deltas: dict[str, torch.Tensor], dtype=torch.float32,
                            name: Callable[[str], str] = kohya_name) -> dict[str, torch.Tensor]:
    """{module: W - W0 (out, in)} -> {'lora_unet_<module>.diff': (out, in)}."""
    return {f"{name(m)}.diff": d.to(dtype).contiguous() for m, d in sorted(deltas.items())}


def a1111_embedding(rows: torch.Tensor) -> dict[str, torch.Tensor]:
    """One token's embedding rows (n, D) or (D,) -> the single-tensor dict A1111 and ComfyUI read."""
    return {EMBEDDING_KEY: rows.detach().float().reshape(-1, rows.shape[-1]).contiguous()}


def embedding_file(rows: Sequence[torch.Tensor], keys: Sequence[str]) -> dict[str, torch.Tensor]:
    """One token's rows per text encoder -> the dict A1111 / ComfyUI read for the family whose
    export keys are `keys` (SD1.5 ('emb_params',); SDXL ('clip_l', 'clip_g'))."""
    if len(rows) != len(keys):
        raise ValueError(f"{len(rows)} row set(s) for embedding keys {list(keys)}")
    return {k: r.detach().float().reshape(-1, r.shape[-1]).contiguous() for k, r in zip(keys, rows)}

