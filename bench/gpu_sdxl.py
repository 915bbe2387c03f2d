"""SDXL edit throughput for bench/gpu.sh: lcd's batched masked edit against diffusers' SDXL
inpainting pipeline, one image per call.

On a GPU (default): SDXL base's architecture with random weights (bench/sdxl_single_file.py's
streamed fp16 single file in generative-models' layout), loaded through the production loader
(`lcd.models.loader.load_sd_pipeline`: family and configs read off the file) in float16 with the
float32 VAE of params.sdxl.yaml; 1024 px, Euler, 50 steps, guidance 5 (params.sdxl.yaml).
  - ours: `lcd.edit.engine.edit_images` on B items (B in 1, 2, 4); seconds per edit = the best
    of `repeats` timed runs / B, after one short warm-up (same batch, 3 steps);
  - diffusers: `StableDiffusionXLInpaintPipeline` on the same components (the same 4-channel
    UNet, Euler from the same scheduler config, strength 1.0: every step runs), one image per
    call, mean over 2 images after a 1-image warm-up.
Time-boxed by its own budget (`--budget-s`, default 330 s from its start; LCD_SDXL_BUDGET_S when
called from bench/gpu.py): a measurement that would start past it is skipped and listed.

`--smoke` runs the same code on CPU with the tiny SDXL (lcd.models.sdxl_tiny, written to a temp
folder and loaded by the same loader), float32, one torch thread, 64 px, 2 steps, batches 1 and 2,
diffusers on 1 image. The last line printed is one JSON object.

    python bench/gpu_sdxl.py [--smoke] [--budget-s 330]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

WARMUP_STEPS = 3
GUIDANCE = 5.0
SCHEDULER = "euler"


@dataclass(frozen=True)
class SdxlPlan:
    device: str
    dtype: str
    size: int
    steps: int
    batches: tuple[int, ...]
    n_ref: int
    repeats: int
    budget_s: float
    threads: int | None = None


GPU = SdxlPlan("cuda", "float16", 1024, 50, (1, 2, 4), 2, 1, 330.0)
SMOKE = SdxlPlan("cpu", "float32", 64, 2, (1, 2), 1, 2, 120.0, threads=1)


class Budget:
    """Seconds since the start; says whether a measurement may still start, records those skipped."""

    def __init__(self, budget_s: float):
        self.budget_s, self.t0, self.skipped = budget_s, time.perf_counter(), []

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def allows(self, name: str) -> bool:
        if self.elapsed() <= self.budget_s:
            return True
        self.skipped.append(f"{name}: skipped at {self.elapsed():.0f} s (budget {self.budget_s:.0f} s)")
        return False


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def load_model(plan: SdxlPlan, tmp: Path):
    """The plan's model written to `tmp` in a real on-disk layout, loaded by the production loader."""
    from lcd.models.loader import load_sd_pipeline

    if plan.device == "cpu":
        from lcd.models.sdxl_tiny import write_tiny_sdxl

        path, label = write_tiny_sdxl(tmp / "sdxl"), "tiny-sdxl (lcd.models.sdxl_tiny)"
    else:
        from bench.sdxl_single_file import write_checkpoint

        path, label = tmp / "sdxl-base-random-fp16.safetensors", "sdxl-random (single file, fp16)"
        write_checkpoint(path)
    lp = load_sd_pipeline(path, dtype=plan.dtype, device=plan.device, vae_dtype="float32")
    return lp, label


def _cfg(plan: SdxlPlan, batch: int, steps: int):
    from lcd.edit.config import EditConfig

    return EditConfig(scheduler=SCHEDULER, steps=steps, guidance=GUIDANCE, size=plan.size, batch_size=batch)


def time_edit(lp, plan: SdxlPlan, batch: int) -> dict:
    """{"s_per_edit", "batch_s"}: the best of plan.repeats calls of edit_images on `batch` items."""
    from bench.edit import scenes
    from lcd.edit.engine import edit_images

    items = scenes(batch, plan.size)
    edit_images(lp, items, _cfg(plan, batch, min(WARMUP_STEPS, plan.steps)))
    best = math.inf
    for _ in range(plan.repeats):
        _sync(plan.device)
        t = time.perf_counter()
        edit_images(lp, items, _cfg(plan, batch, plan.steps))
        _sync(plan.device)
        best = min(best, time.perf_counter() - t)
    return {"s_per_edit": best / batch, "batch_s": best}


def time_diffusers(lp, plan: SdxlPlan) -> dict:
    """Mean and min seconds per image of diffusers' SDXL inpainting pipeline, one image per call."""
    import numpy as np
    import torch
    from diffusers import StableDiffusionXLInpaintPipeline
    from PIL import Image

    from bench.edit import scenes
    from lcd.models.schedulers import build_scheduler

    ref = StableDiffusionXLInpaintPipeline(**(lp.pipe.components | {
        "scheduler": build_scheduler(SCHEDULER, lp.pipe.scheduler.config)}), add_watermarker=False)
    ref.set_progress_bar_config(disable=True)

    def run(it, steps: int) -> None:
        mask = Image.fromarray(it.mask.astype(np.uint8) * 255)
        ref(it.prompt, image=Image.fromarray(it.image), mask_image=mask, height=plan.size, width=plan.size,
            num_inference_steps=steps, guidance_scale=GUIDANCE, strength=1.0,
            generator=torch.Generator("cpu").manual_seed(it.seed))

    items = scenes(plan.n_ref, plan.size)
    run(items[0], min(WARMUP_STEPS, plan.steps))
    times = []
    for it in items:
        _sync(plan.device)
        t = time.perf_counter()
        run(it, plan.steps)
        _sync(plan.device)
        times.append(time.perf_counter() - t)
    return {"s_per_image": sum(times) / len(times), "min_s_per_image": min(times), "images": len(times)}


def measure(plan: SdxlPlan, budget: Budget) -> dict:
    """Model, ours at each batch, diffusers per image: the result dict."""
    import torch

    tmp = Path(tempfile.mkdtemp(prefix="lcd-bench-sdxl-"))
    try:
        lp, label = load_model(plan, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # loaded: the weights are in memory
    setup_s = budget.elapsed()
    edit = {str(b): time_edit(lp, plan, b) for b in plan.batches if budget.allows(f"sdxl edit batch {b}")}
    best_batch = min(edit, key=lambda k: edit[k]["s_per_edit"]) if edit else None
    best = edit[best_batch]["s_per_edit"] if edit else None
    ref = time_diffusers(lp, plan) if budget.allows("sdxl diffusers") else None
    return {
        "device": torch.cuda.get_device_name(0) if plan.device == "cuda" else "cpu",
        "family": lp.family,
        "edit": edit,
        "best_batch": int(best_batch) if best_batch else None,
        "best_s_per_edit": best,
        "diffusers_s_per_image": ref["s_per_image"] if ref else None,
        "diffusers": ref,
        "speedup_vs_diffusers": ref["s_per_image"] / best if ref and best else None,
        "setup_s": setup_s,
        "config": {"model": label, "dtype": plan.dtype, "vae_dtype": str(lp.pipe.vae.dtype).replace("torch.", ""),
                   "size": plan.size, "steps": plan.steps, "guidance": GUIDANCE, "scheduler": SCHEDULER,
                   "batches": list(plan.batches), "timed_repeats": plan.repeats,
                   "warmup_steps": min(WARMUP_STEPS, plan.steps), "diffusers_images": plan.n_ref,
                   "torch": torch.__version__, "threads": torch.get_num_threads()},
    }


def run_sdxl(smoke: bool, budget_s: float | None = None) -> dict:
    """bench/gpu.py's SDXL section: the plan for `smoke` (CPU, tiny) or the GPU, time-boxed by
    `budget_s` (default: LCD_SDXL_BUDGET_S or the plan's). {"skipped": why} without CUDA."""
    import torch

    plan = SMOKE if smoke else GPU
    if plan.device == "cuda" and not torch.cuda.is_available():
        return {"skipped": "no CUDA device (use --smoke for the CPU check)"}
    if plan.threads:
        torch.set_num_threads(plan.threads)
    budget = Budget(budget_s if budget_s is not None else float(os.environ.get("LCD_SDXL_BUDGET_S", plan.budget_s)))
    result = measure(plan, budget)
    return result | {"skipped": budget.skipped, "total_s": budget.elapsed()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny SDXL, seconds")
    ap.add_argument("--budget-s", type=float, help="no measurement starts after this (seconds)")
    args = ap.parse_args()
    result = run_sdxl(args.smoke, args.budget_s)
    if "device" not in result:
        sys.exit(f"bench/gpu_sdxl.py: {result['skipped']}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
