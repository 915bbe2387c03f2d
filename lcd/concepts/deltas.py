"""The change a K/V concept makes to each cross-attention layer, whatever its storage.

Merge, compression and the kohya / LyCORIS exports all work on W - W0 per layer; this module is
the one place that reads it off a concept: full replacement weights minus the base, or a stored
low-rank product (trained LoRA or compressed) times its scale.
"""

from __future__ import annotations

import torch

from lcd.concepts.io import Concept, check_unet_shapes
from lcd.errors import LcdError

KV_SUFFIXES = (".to_k.weight", ".to_v.weight")


def check_kv_concept(concept: Concept) -> None:
    """Merge/compress/kohya need a concept that changes only attn2 to_k/to_v ('kv' or 'lora')."""
    if concept.method not in ("kv", "lora"):
        raise LcdError(
            f"{concept.name}: method {concept.method!r} changes more than the K/V projections; "
            "only 'kv' and 'lora' concepts can be merged, compressed or exported as a LoRA",
            item=concept.name,
        )


def kv_deltas(concept: Concept, unet) -> dict[str, torch.Tensor]:
    """{module path ('...attn2.to_k'): W - W0 (out, in) float32 on CPU} against `unet`'s weights.

    Shapes are checked against `unet` first (ModelLoadError naming the concept on a mismatch)."""
    check_kv_concept(concept)
    params = check_unet_shapes(concept, unet)
    out: dict[str, torch.Tensor] = {}
    if concept.lowrank:
        for m in concept.modules:
            a, b = concept.unet[f"{m}.lora_A"].float(), concept.unet[f"{m}.lora_B"].float()
            out[m] = (concept.lora_scale * (b @ a)).cpu()
        return out
    for k, w in concept.unet.items():
        if not k.endswith(KV_SUFFIXES):
            raise LcdError(f"{concept.name}: unexpected tensor {k} in a K/V concept", item=concept.name)
        out[k[: -len(".weight")]] = (w.float() - params[k].detach().float().cpu())
    return out
