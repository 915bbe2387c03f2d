"""Which UNet weights a fine-tune trains: a pure function of the UNet's module names.

`trainable_names(named_modules, method)` decides from module paths alone, so the same code counts
SD1.5's trainable parameters on a meta-device UNet built from its config (no weights, no memory)
and picks the tensors to unfreeze on a real one. In SD1.5 the 16 cross-attention layers (`attn2`)
hold 16 `to_k` and 16 `to_v` weights: 19,169,280 of the UNet's 859,520,964 parameters.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

from lcd.concepts.io import CROSSATTN_SUFFIXES, KV_SUFFIXES
from lcd.errors import LcdError

METHODS = ("kv", "crossattn", "lora", "full")


def target_modules(method: str) -> tuple[str, ...]:
    """Module-name suffixes whose weights change under `method` (LoRA adapts the K/V modules)."""
    if method in ("kv", "lora"):
        return KV_SUFFIXES
    if method == "crossattn":
        return CROSSATTN_SUFFIXES
    if method == "full":
        return ("",)
    raise LcdError(f"method must be one of {METHODS}, got {method!r}", item="method")


def trainable_names(param_names: Iterable[str], method: str) -> list[str]:
    """Names of the UNet parameters trained directly under `method` ('lora' trains none of the
    base tensors: its adapters are new parameters). Biases of the chosen modules train too."""
    if method == "lora":
        return []
    if method == "full":
        return list(param_names)
    suffixes = target_modules(method)
    return [n for n in param_names if n.rsplit(".", 1)[0].endswith(suffixes)]


def meta_unet(config: dict[str, Any]):
    """UNet2DConditionModel built from `config` on the meta device: shapes only, no memory."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel.from_config(dict(config))


def count_params(config: dict[str, Any], method: str = "kv") -> dict[str, int]:
    """{"unet": all UNet parameters, "trainable": those `method` trains, "tensors": how many tensors}.

    For 'lora' the count is of the adapters (r * (in + out) per K/V module, rank from config key
    'lora_rank', default 4)."""
    config = dict(config)
    rank = int(config.pop("lora_rank", 4))
    unet = meta_unet(config)
    shapes = {n: tuple(p.shape) for n, p in unet.named_parameters()}
    total = sum(_numel(s) for s in shapes.values())
    if method == "lora":
        mods = [n.rsplit(".", 1)[0] for n in shapes if n.rsplit(".", 1)[0].endswith(KV_SUFFIXES) and n.endswith("weight")]
        n = sum(rank * (shapes[m + ".weight"][0] + shapes[m + ".weight"][1]) for m in mods)
        return {"unet": total, "trainable": n, "tensors": len(mods)}
    names = trainable_names(shapes, method)
    return {"unet": total, "trainable": sum(_numel(shapes[n]) for n in names), "tensors": len(names)}


def _numel(shape: tuple[int, ...]) -> int:
    out = 1
    for s in shape:
        out *= s
    return out


def freeze_except(unet, method: str) -> list[str]:
    """Set requires_grad on exactly the tensors `method` trains; return their names."""
    names = trainable_names([n for n, _ in unet.named_parameters()], method)
    chosen = set(names)
    for n, p in unet.named_parameters():
        p.requires_grad_(n in chosen)
    if method != "lora" and not names:
        raise LcdError(f"the UNet has no modules ending in {target_modules(method)} to train", item="method")
    return names


def add_lora(unet, rank: int, alpha: float | None, seed: int = 0) -> list[str]:
    """Attach peft LoRA adapters of rank `rank` to attn2 to_k / to_v; return adapter parameter names.

    Initialised under a fixed seed (B = 0, so the model starts exactly at the base)."""
    from peft import LoraConfig

    for p in unet.parameters():
        p.requires_grad_(False)
    cfg = LoraConfig(r=rank, lora_alpha=alpha or rank, init_lora_weights="gaussian", target_modules=list(KV_SUFFIXES))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet.add_adapter(cfg)
    names = [n for n, p in unet.named_parameters() if "lora_" in n]
    for n, p in unet.named_parameters():
        p.requires_grad_("lora_" in n)
    if not names:
        raise LcdError("LoRA found no attn2.to_k / attn2.to_v modules in the UNet", item="method")
    return names
