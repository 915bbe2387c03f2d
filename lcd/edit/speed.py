"""Execution settings that make an edit faster without changing what it makes (within rounding).

`apply_speed_settings` puts the UNet and VAE in channels_last and wraps the UNet in
`torch.compile` (edit.channels_last / edit.compile), once per loaded pipeline: it is idempotent,
so every entry point calls it. `resolve_batch_size` turns `edit.batch_size: auto` into a number
from free accelerator memory. None of these is part of an item's hash (lcd.edit.config
EXECUTION_ONLY): results agree with the plain path within float rounding (tests/lcd/edit/test_speed.py).
"""

from __future__ import annotations

import torch

from lcd.edit.config import EditConfig

# SD1.5-size UNet + VAE activations per item at 512 px in half precision, both guidance branches,
# SDPA attention: measured peaks are ~0.6-0.9 GB per item; 1.5 GB leaves room for the allocator.
BYTES_PER_ITEM_512_HALF = 1.5e9
AUTO_MAX = 32
AUTO_CPU = 4


def apply_speed_settings(lp, cfg: EditConfig) -> None:
    """channels_last and torch.compile on `lp.pipe` as `cfg` asks; a no-op when already applied."""
    pipe = lp.pipe
    if cfg.channels_last and not getattr(pipe, "_lcd_channels_last", False):
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
        pipe._lcd_channels_last = True
    if cfg.compile and not getattr(pipe, "_lcd_compiled", False):
        # diffusers' recipe: compile the UNet forward; shapes are fixed per (batch, size), so a
        # shard pays one compile per distinct batch length
        pipe.unet = torch.compile(pipe.unet, backend=cfg.compile_backend, fullgraph=False)
        pipe._lcd_compiled = True


def auto_batch_size(free_bytes: int | None, size: int, dtype: torch.dtype) -> int:
    """Items per batch that fit `free_bytes` of accelerator memory at working size `size`
    (None: no accelerator -> AUTO_CPU). Pure arithmetic over BYTES_PER_ITEM_512_HALF, scaled by
    pixel count and element size; a power of two in 1..AUTO_MAX."""
    if free_bytes is None:
        return AUTO_CPU
    per_item = BYTES_PER_ITEM_512_HALF * (size / 512) ** 2 * (torch.finfo(dtype).bits / 16)
    n = max(1, min(AUTO_MAX, int(0.8 * free_bytes // per_item)))
    return 1 << (n.bit_length() - 1)


def resolve_batch_size(lp, cfg: EditConfig) -> int:
    """`cfg.batch_size` as a number: itself, or for "auto" what fits the UNet's device now."""
    if cfg.batch_size != "auto":
        return cfg.batch_size
    device = lp.pipe.unet.device
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None
    return auto_batch_size(free, cfg.size, lp.pipe.unet.dtype)
