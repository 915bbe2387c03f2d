"""Ablation tables on tiny models."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lcd.config import EditConfig
from lcd.errors import LcdError
from lcd.evaluate import ablations as A


def test_kv_vs_all_counts_cross_attention_kv(tiny_sd):
    unet = tiny_sd.pipe.unet
    expected_kv = sum(m.to_k.weight.numel() + m.to_v.weight.numel()
                      for n, m in unet.named_modules() if n.endswith("attn2"))
    rows = A.kv_vs_all_table(unet, timings_s={"kv": 1.5, "all": 4.0}, token_dim=32)
    kv, full = rows
    assert kv["trainable_params"] == expected_kv + 32 and kv["time_s"] == 1.5
    assert full["trainable_params"] == sum(p.numel() for p in unet.parameters()) + 32 and full["time_s"] == 4.0
    assert 0 < kv["fraction_of_unet"] < 0.2 and full["fraction_of_unet"] == 1.0
    assert A.kv_vs_all_table(unet)[0]["time_s"] is None


def test_kv_vs_all_refuses_unet_without_cross_attention():
    import torch

    with pytest.raises(LcdError, match="no cross-attention K/V"):
        A.kv_vs_all_table(torch.nn.Linear(2, 2))


def test_region_ablation_sam_region_keeps_background(tiny_sd, lpips_random):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    mask = np.zeros((64, 64), bool)
    mask[16:48, 16:48] = True
    scenes = [A.Scene("s0", image, mask, "a photo of a dog")]
    cfg = EditConfig(steps=2, size=64, dilate_px=0, feather_px=0)
    rows = A.region_ablation(tiny_sd, scenes, {"none": A.whole_image, "sam": A.sam_region}, cfg, lpips_random)
    by = {r["region"]: r for r in rows}
    assert by["sam"]["bg_lpips"] == 0.0 and by["sam"]["bg_psnr"] == math.inf  # nothing outside SAM changed
    assert by["none"]["bg_lpips"] > 0 and by["none"]["bg_psnr"] < 40
    with pytest.raises(LcdError, match="returned"):
        A.region_ablation(tiny_sd, scenes, {"bad": lambda i, m, p: m[:8]}, cfg, None)


def test_token_ablation_methods_share_the_concept():
    provider = lambda s: (None, "[P]")  # noqa: E731
    with_t, without_t = A.token_ablation_methods(provider)
    assert with_t.use_token and not without_t.use_token and with_t.concept is without_t.concept
