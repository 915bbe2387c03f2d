"""The masks benchmarks' code on CPU: bench/gpu.py's masks section (bench/gpu_masks.py, tiny
SAM smoke) gives ours' and stock's images/s with equal masks in float32, and
bench/masks_compare.py's agreement figures count what they claim."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lcd.masks.rle import encode_rle


@pytest.mark.slow
def test_gpu_masks_smoke_times_ours_and_stock_with_equal_masks():
    from bench.gpu_masks import measure_masks

    res = measure_masks("cpu", smoke=True)
    for k in ("images_per_s_ours", "images_per_s_stock", "speedup", "images_per_s_ours_bfloat16"):
        assert isinstance(res[k], float) and math.isfinite(res[k]) and res[k] > 0, (k, res[k])
    assert res["speedup"] == pytest.approx(res["images_per_s_ours"] / res["images_per_s_stock"])
    # photos of 256 px are below SAM's working size: float32 masks equal stock's
    assert res["agreement_vs_stock"] == {"images_same_mask_count": 1.0, "matched_mask_iou_mean": 1.0}
    s = res["settings"]
    assert 0 < s["pred_iou_thresh"] < 1 and 0 < s["stability_score_thresh"] < 1  # set by quantile


def test_compare_counts_images_with_the_same_mask_count_and_matched_iou():
    from bench.masks_compare import compare

    a = np.zeros((10, 10), bool)
    a[:5] = True
    b = a.copy()
    b[5] = True  # IoU 50/60 with a
    ours = {"images": [{"masks": [encode_rle(a)]}, {"masks": [encode_rle(a), encode_rle(~a)]}]}
    stock = {"images": [{"masks": [encode_rle(b)]}, {"masks": [encode_rle(a)]}]}
    got = compare(ours, stock)
    assert got["images_same_mask_count"] == 0.5
    assert got["matched_mask_iou_mean"] == pytest.approx((50 / 60 + 1.0) / 2) and got["stock_masks"] == 2
