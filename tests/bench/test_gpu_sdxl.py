"""bench/gpu_sdxl.py (bench/gpu.sh's SDXL section) runs its code on CPU with the tiny SDXL loaded
by the production loader: ours at batches 1 and 2 and diffusers' SDXL inpainting pipeline per
image, each timed; the GPU plan is SDXL's 1024 px with batch 1 among its batches."""

from __future__ import annotations

import dataclasses
import math

import pytest


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def test_sdxl_throughput_smoke_times_ours_and_diffusers():
    from bench.gpu_sdxl import GPU, SMOKE, Budget, measure

    res = measure(dataclasses.replace(SMOKE, steps=1, repeats=1, threads=None), Budget(600.0))
    assert res["device"] == "cpu" and res["family"] == "sdxl" and res["config"]["model"].startswith("tiny-sdxl")
    assert set(res["edit"]) == {"1", "2"}
    for b, row in res["edit"].items():
        assert _positive(row["s_per_edit"]) and row["s_per_edit"] == pytest.approx(row["batch_s"] / int(b))
    assert res["best_s_per_edit"] == min(r["s_per_edit"] for r in res["edit"].values())
    assert _positive(res["diffusers_s_per_image"]) and res["diffusers"]["images"] == 1
    assert res["speedup_vs_diffusers"] == pytest.approx(res["diffusers_s_per_image"] / res["best_s_per_edit"])
    assert (GPU.size, GPU.dtype, GPU.batches[0], GPU.device) == (1024, "float16", 1, "cuda")


def test_a_budget_that_has_run_out_skips_and_says_so():
    from bench.gpu_sdxl import Budget

    b = Budget(-1.0)
    assert not b.allows("sdxl edit batch 4")
    assert b.skipped and b.skipped[0].startswith("sdxl edit batch 4: skipped at")
