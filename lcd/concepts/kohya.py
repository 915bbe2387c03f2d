"""Import a kohya-format LoRA (sd-scripts, A1111, ComfyUI share it) as a concept, where its layers
are ours: only cross-attention K/V (attn2 to_k / to_v) of the base UNet.

A kohya file holds per module `<name>.lora_down.weight` (r, in), `<name>.lora_up.weight` (out, r)
and optionally `<name>.alpha`; readers add (alpha / r) * up @ down (alpha absent or 0: r). Names
follow the base's family (lcd.concepts.family): SD1.x diffusers paths, SDXL LDM paths
(lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k). A LoRA that also trains text
encoders (lora_te1_/lora_te2_), self-attention, feed-forward or convolutions changes what a
concept cannot hold, so it is refused in one line naming a foreign key, not half-imported.

The token comes from a textual-inversion file beside it: SD1.5 one tensor ('emb_params' or the
only key), SDXL 'clip_l' and 'clip_g' (A1111 / ComfyUI's layout), one row per token.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lcd.concepts.family import family_of_unet
from lcd.concepts.io import KV_SUFFIXES, Concept, _one_line
from lcd.errors import ModelLoadError

LEAVES = (".lora_down.weight", ".lora_up.weight", ".alpha")


def _read(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # noqa: BLE001 - safetensors' own error types for a corrupt file
        raise ModelLoadError(f"{path}: cannot read the {what}: {_one_line(e)}", item=str(path)) from None


def kohya_modules(unet) -> dict[str, str]:
    """{kohya module name: our module path} for every attn2 to_k / to_v of `unet`, named as its family names them."""
    fam = family_of_unet(unet)
    lpb = unet.config.layers_per_block
    lpb = lpb if isinstance(lpb, int) else lpb[0]
    return {fam.kohya_name(n, lpb): n for n, _ in unet.named_modules() if n.endswith(KV_SUFFIXES)}


def _group(sd: dict[str, torch.Tensor], ours: dict[str, str], where: str) -> dict[str, dict[str, torch.Tensor]]:
    """{our module: {'down', 'up', 'alpha'?}}; a key of another layer or leaf is a one-line refusal."""
    groups: dict[str, dict[str, torch.Tensor]] = {}
    foreign = []
    for k, t in sd.items():
        leaf = next((s for s in LEAVES if k.endswith(s)), None)
        name = k[: -len(leaf)] if leaf else k
        if leaf is None or name not in ours:
            foreign.append(k)
            continue
        groups.setdefault(ours[name], {})[{".lora_down.weight": "down", ".lora_up.weight": "up", ".alpha": "alpha"}[leaf]] = t
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise ModelLoadError(f"{where}: {foreign[0]}{more} is not a cross-attention K/V LoRA of this base's UNet; "
                             "lcd imports LoRAs that change only attn2 to_k/to_v (train with network_args "
                             "that target them, or use the LoRA in its own tool)", item=where)
    if not groups:
        raise ModelLoadError(f"{where}: holds no LoRA tensors", item=where)
    return groups


def _factors(groups: dict[str, dict[str, torch.Tensor]], where: str) -> tuple[dict[str, torch.Tensor], float]:
    """lora_A / lora_B per module and one scale: the file's alpha / r when every module shares it
    (factors kept as trained), else 1 with each module's alpha / r folded into its lora_B."""
    scales: dict[str, float] = {}
    for m, g in groups.items():
        if "down" not in g or "up" not in g:
            raise ModelLoadError(f"{where}: {m} needs both lora_down and lora_up", item=where)
        r = g["down"].shape[0]
        if g["down"].ndim != 2 or g["up"].ndim != 2 or g["up"].shape[1] != r:
            raise ModelLoadError(f"{where}: {m}: lora_down {tuple(g['down'].shape)} and lora_up "
                                 f"{tuple(g['up'].shape)} are not a linear LoRA pair of one rank", item=where)
        a = float(g["alpha"]) if "alpha" in g and float(g["alpha"]) != 0 else float(r)
        scales[m] = a / r
    one = len(set(scales.values())) == 1
    scale = next(iter(scales.values())) if one else 1.0
    tensors: dict[str, torch.Tensor] = {}
    for m, g in sorted(groups.items()):
        up = g["up"].float() if one else (g["up"].double() * scales[m]).float()
        tensors[f"{m}.lora_A"], tensors[f"{m}.lora_B"] = g["down"].float().contiguous(), up.contiguous()
    return tensors, scale


def _rows(path: str | Path, keys: tuple[str, ...]) -> list[torch.Tensor]:
    """The embedding file's rows per text encoder (SD1.5: its one tensor; SDXL: clip_l, clip_g)."""
    sd = _read(path, "embedding")
    if len(keys) == 1 and len(sd) == 1:
        rows = [next(iter(sd.values()))]
    elif all(k in sd for k in keys):
        rows = [sd[k] for k in keys]
    else:
        raise ModelLoadError(f"{path}: an embedding for this base needs {' and '.join(keys)}; the file holds "
                             f"{', '.join(sorted(sd)) or 'nothing'}", item=str(path))
    out = []
    for k, r in zip(keys, rows):
        r = r.float().reshape(-1, r.shape[-1]) if r.ndim else r
        if r.ndim != 2 or r.shape[0] != 1:
            raise ModelLoadError(f"{path}: {k} has shape {tuple(r.shape)}; a concept token is one vector (1, D) "
                                 "per encoder (multi-vector embeddings are not concepts)", item=str(path))
        out.append(r)
    return out


def import_kohya(lora: str | Path, embedding: str | Path, unet, token: str = "[P]",
                 card: dict[str, Any] | None = None) -> Concept:
    """A 'lora' Concept from a kohya LoRA file and its token's embedding file, for `unet`'s base
    (its family decides the key names and the embedding keys). Applying it adds exactly what
    sd-scripts / A1111 / ComfyUI add at strength 1.0. One-line ModelLoadError naming the file."""
    from lcd.concepts.io import check_unet_shapes
    from lcd.concepts.validate import check_concept

    fam = family_of_unet(unet)
    groups = _group(_read(lora, "LoRA"), kohya_modules(unet), str(lora))
    tensors, scale = _factors(groups, str(lora))
    rows = _rows(embedding, fam.export_keys)
    meta = dict(card or {}, imported_from=str(lora), source_format=f"kohya lora ({fam.name})",
                config={"lora_rank": max(t.shape[0] for k, t in tensors.items() if k.endswith("lora_A"))})
    concept = Concept([token], rows[0], "lora", tensors, scale, meta, str(lora), "lowrank",
                      rows[1] if len(rows) > 1 else None)
    check_concept(concept)  # what load_concept would refuse is not returned
    check_unet_shapes(concept, unet)
    return concept
