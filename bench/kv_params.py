"""Table 2's parameter column for real SD1.5 without weights: the UNet is built on the meta device
from SD1.5's config, so this runs anywhere in a second. Run from the repo root: `PYTHONPATH=. python bench/kv_params.py`.
Last printed line: one JSON object."""

from __future__ import annotations

import json

from accelerate import init_empty_weights
from diffusers import UNet2DConditionModel

from lcd.evaluate.ablations import kv_vs_all_table

SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=768, attention_head_dim=8,
)

if __name__ == "__main__":
    with init_empty_weights():
        unet = UNet2DConditionModel(**SD15_UNET)
    print(json.dumps({"sd15_unet": kv_vs_all_table(unet, token_dim=768)}))
