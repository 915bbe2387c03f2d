"""bench/gpu.sh --smoke runs the GPU benchmark's code on CPU with the tiny models; the SD1.5
random-weight builder's configs give SD1.5's real parameter counts (built on the meta device:
writing the real folder takes GBs, so no test does it)."""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
KEYS = {"device", "edit", "best_batch", "best_s_per_edit", "diffusers_s_per_image", "speedup_vs_diffusers",
        "compiled_s_per_edit", "train", "target_s_per_edit", "meets_target", "total_s"}


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


@pytest.mark.slow
def test_gpu_benchmark_smoke_prints_its_json():
    out = subprocess.run(["bash", "bench/gpu.sh", "--smoke"], cwd=REPO, env=dict(os.environ),
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert KEYS <= set(res), KEYS - set(res)
    assert res["device"] == "cpu" and res["config"]["model"].startswith("tiny")
    assert set(res["edit"]) == {"1", "2"} == {str(b) for b in res["config"]["batches"]}
    for b, row in res["edit"].items():
        assert _positive(row["s_per_edit"]) and _positive(row["batch_s"]), (b, row)
        assert row["s_per_edit"] == pytest.approx(row["batch_s"] / int(b))
    assert res["best_s_per_edit"] == min(r["s_per_edit"] for r in res["edit"].values())
    assert res["edit"][str(res["best_batch"])]["s_per_edit"] == res["best_s_per_edit"]
    for k in ("diffusers_s_per_image", "speedup_vs_diffusers", "total_s"):
        assert _positive(res[k]), (k, res[k])
    assert res["speedup_vs_diffusers"] == pytest.approx(res["diffusers_s_per_image"] / res["best_s_per_edit"])
    # the compiled edit is timed when EditConfig has the speed settings, and says why when not
    assert res["compiled_s_per_edit"] is None or _positive(res["compiled_s_per_edit"])
    assert res["compiled_s_per_edit"] is not None or set(res["compiled"]) & {"skipped", "error"}
    assert "error" not in res["compiled"], res["compiled"]
    assert "skipped" in res["train"] or _positive(res["train"]["step_s_kv"])
    assert res["target_s_per_edit"] == 0.4 and isinstance(res["meets_target"], bool)
    assert res["skipped"] == []


def test_sd15_configs_give_sd15_parameter_counts():
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from bench.kv_params import SD15_UNET
    from bench.sd15_random import sd15_configs

    cfg = sd15_configs()
    assert cfg["unet"] == SD15_UNET
    with init_empty_weights():
        unet = UNet2DConditionModel(**cfg["unet"])
        text = CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"]))
        vae = AutoencoderKL(**cfg["vae"])
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(unet) == 859_520_964
    assert count(text) == 123_060_480
    assert count(vae) == 83_653_863
    assert unet.device.type == "meta"
    sched = PNDMScheduler(**cfg["scheduler"]).config
    assert (sched.skip_prk_steps, sched.steps_offset, sched.beta_schedule) == (True, 1, "scaled_linear")
    assert vae.config.scaling_factor == 0.18215 and vae.config.latent_channels == 4
