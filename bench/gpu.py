"""Issue 14's GPU benchmark in one run: edit throughput vs batch size, diffusers' inpainting
pipeline per image, the compiled edit, and K/V-only vs full-UNet training.

On a GPU (default): SD1.5's architecture with random weights (bench/sd15_random.py) in float16,
loaded through `lcd.models.loader.load_sd_pipeline`; 512 px, 60 DDIM steps, guidance 6.
  - ours: `lcd.edit.engine.edit_images` on B items (B in 1, 4, 8, 16); seconds per edit = the
    best of 2 timed runs / B, after one short warm-up (same batch, 3 steps: kernels, allocator);
  - diffusers: `StableDiffusionInpaintPipeline` on the same components with DDIM built from the
    same scheduler config, one image per call, mean over 4 images after a 1-image warm-up;
  - compiled: ours at the best batch with `channels_last=True, compile=True` when EditConfig has
    those fields (`lcd.edit.speed.apply_speed_settings` applied once), else null;
  - train: bench/train.py (its own subprocesses; SD1.5's UNet at 512 px, bf16 autocast).
Time-boxed: a measurement that would start past `--budget-s` (default 420 s from the start) is
skipped and listed under "skipped"; the training run is killed at `--hard-s` (default 465 s).
Speed does not depend on weight values, so random weights time the real model.

`--smoke` runs the same code on CPU with the tiny models (lcd.models.tiny), float32, one torch
thread, 64 px, 2 steps, batches 1 and 2, diffusers on 1 image, the compiled edit with the aot_eager backend
(no C++ toolchain), and training skipped (bench/train.py's smallest CPU run takes ~60 s, over
the ~30 s a smoke may spend). The last line printed is one JSON object.

Then automatic masks (bench/gpu_masks.py, issue 29): SAM ViT-H random weights, 32 points per
side, 1024 px photos, images/s of lcd.masks' bulk generator (4 images per encoder call; fp32 and
fp16 encoder) vs stock SamAutomaticMaskGenerator in the same run; the smoke runs it with the
tiny SAM. Result under "masks".

    bash bench/gpu.sh [--smoke] [--budget-s 420]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.gpu_sdxl import run_sdxl  # noqa: E402 - SDXL's section (issue 31): its own model and time box

TARGET_S_PER_EDIT = 0.4
WARMUP_STEPS = 3


@dataclass(frozen=True)
class Plan:
    """What one run measures. `train_args` None: training skipped for `train_skip_reason`."""

    device: str
    dtype: str
    size: int
    steps: int
    batches: tuple[int, ...]
    n_ref: int
    compile_backend: str
    train_args: tuple[str, ...] | None
    train_skip_reason: str = ""
    repeats: int = 2
    # the compiled edit cannot be interrupted: it starts only with this much budget left
    compile_reserve_s: float = 0.0
    # torch threads (None: torch's default); the smoke uses 1: tiny models gain nothing from more,
    # and on a busy machine OpenMP's spinning threads slow them down many-fold
    threads: int | None = None


GPU = Plan("cuda", "float16", 512, 60, (1, 4, 8, 16), 4, "inductor",
           ("--device", "cuda", "--mixed-precision", "bf16", "--steps", "3"), compile_reserve_s=180.0)
SMOKE = Plan("cpu", "float32", 64, 2, (1, 2), 1, "aot_eager", None, threads=1, train_skip_reason=(
             "smoke: bench/train.py's smallest CPU run (reduced SD1.5 UNet at 64 px, 2 subprocesses) "
             "takes ~60 s on 2 idle cores (> 30 s); run `python bench/train.py --device cpu --steps 1` "
             "for it"))


@dataclass
class Clock:
    """Seconds since the start; decides whether a measurement may still start."""

    budget_s: float
    t0: float = field(default_factory=time.perf_counter)
    skipped: list[str] = field(default_factory=list)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def allows(self, name: str, reserve_s: float = 0.0) -> bool:
        """True if `name` may start now, `reserve_s` (its expected length) before the budget ends."""
        if self.elapsed() <= self.budget_s - reserve_s:
            return True
        needs = f", needs ~{reserve_s:.0f} s" if reserve_s else ""
        at = self.elapsed()
        self.skipped.append(f"{name}: skipped at {at:.0f} s (budget {self.budget_s:.0f} s{needs})")
        return False


def log(msg: str) -> None:
    print(msg, flush=True)


def best_of(fn, warmup, device: str, repeats: int) -> float:
    """Fastest of `repeats` timed calls of fn() after one warmup() (seconds, synchronised)."""
    from bench.edit import sync

    warmup()
    best = math.inf
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def edit_config(plan: Plan, batch: int, steps: int | None = None, **speed):
    from lcd.edit.config import EditConfig

    return EditConfig(scheduler="ddim", steps=steps or plan.steps, guidance=6.0, size=plan.size,
                      batch_size=batch, **speed)


def time_edit(lp, plan: Plan, batch: int, **speed) -> dict:
    """{"s_per_edit", "batch_s"} of `edit_images` on `batch` items in one call."""
    from bench.edit import scenes
    from lcd.edit.engine import edit_images

    items = scenes(batch, plan.size)
    cfg = edit_config(plan, batch, **speed)
    warm = edit_config(plan, batch, min(WARMUP_STEPS, plan.steps), **speed)
    t = best_of(lambda: edit_images(lp, items, cfg), lambda: edit_images(lp, items, warm),
                plan.device, plan.repeats)
    return {"s_per_edit": t / batch, "batch_s": t}


def time_diffusers(lp, plan: Plan) -> dict:
    """Mean and min seconds per image of diffusers' inpainting pipeline, one image per call."""
    import numpy as np
    import torch
    from diffusers import DDIMScheduler, StableDiffusionInpaintPipeline
    from PIL import Image

    from bench.edit import scenes, sync

    ref = StableDiffusionInpaintPipeline(**(lp.pipe.components | {
        "scheduler": DDIMScheduler.from_config(lp.pipe.scheduler.config)}))
    ref.set_progress_bar_config(disable=True)

    def run(it, steps):
        mask = Image.fromarray(it.mask.astype(np.uint8) * 255)
        ref(it.prompt, image=Image.fromarray(it.image), mask_image=mask,
            height=plan.size, width=plan.size, num_inference_steps=steps, guidance_scale=6.0,
            generator=torch.Generator("cpu").manual_seed(it.seed))

    items = scenes(plan.n_ref, plan.size)
    run(items[0], min(WARMUP_STEPS, plan.steps))
    times = []
    for it in items:
        sync(plan.device)
        t = time.perf_counter()
        run(it, plan.steps)
        sync(plan.device)
        times.append(time.perf_counter() - t)
    return {"s_per_image": sum(times) / len(times), "min_s_per_image": min(times), "images": len(times)}


def time_compiled(lp, plan: Plan, batch: int) -> dict:
    """The edit at `batch` with channels_last + torch.compile; {"skipped": why} where
    EditConfig has no such fields yet. Compile time is paid in the warm-up and reported."""
    from lcd.edit.config import EditConfig

    if "compile" not in EditConfig.model_fields or importlib.util.find_spec("lcd.edit.speed") is None:
        return {"skipped": "EditConfig has no compile field or lcd.edit.speed is missing"}
    from lcd.edit.speed import apply_speed_settings

    speed = dict(channels_last=True, compile=True, compile_backend=plan.compile_backend)
    apply_speed_settings(lp, edit_config(plan, batch, **speed))
    t = time.perf_counter()
    out = time_edit(lp, plan, batch, **speed)
    return out | {"batch": batch, "backend": plan.compile_backend,
                  "warmup_and_timed_s": time.perf_counter() - t}


def run_train(plan: Plan, clock: Clock, hard_s: float) -> dict:
    """bench/train.py's JSON, run in its own process group so a timeout kills its children too."""
    if plan.train_args is None:
        return {"skipped": plan.train_skip_reason}
    timeout = max(10.0, hard_s - clock.elapsed())
    cmd = [sys.executable, str(REPO / "bench" / "train.py"), *plan.train_args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, cwd=REPO)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return {"skipped": f"bench/train.py killed after {timeout:.0f} s (time box)", "cmd": cmd[1:]}
    if proc.returncode != 0:
        return {"error": f"bench/train.py exited {proc.returncode}: {err[-1500:]}", "cmd": cmd[1:]}
    return json.loads(out.strip().splitlines()[-1]) | {"cmd": cmd[1:]}


def load_model(plan: Plan):
    """Write the plan's random-weight model to a temp dir, load it through the production loader."""
    from lcd.models.loader import load_sd_pipeline

    tmp = Path(tempfile.mkdtemp(prefix="lcd-bench-gpu-"))
    try:
        if plan.device == "cpu":
            from lcd.models.tiny import write_tiny_sd

            path, label = write_tiny_sd(tmp / "sd"), "tiny (lcd.models.tiny)"
        else:
            from bench.sd15_random import write_sd15_random

            path, label = write_sd15_random(tmp / "sd15", dtype=plan.dtype), "sd15-random"
        return load_sd_pipeline(path, dtype=plan.dtype, device=plan.device), label
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def measure(plan: Plan, clock: Clock, hard_s: float) -> dict:
    """Every measurement in priority order; the result dict that main prints."""
    import torch

    # 1. model
    lp, label = load_model(plan)
    setup_s = clock.elapsed()
    log(f"model {label} loaded in {setup_s:.1f} s")
    # 2. ours at each batch size
    edit = {}
    for b in plan.batches:
        if clock.allows(f"edit batch {b}"):
            edit[str(b)] = time_edit(lp, plan, b)
            log(f"edit batch {b}: {edit[str(b)]['s_per_edit']:.4f} s/edit")
    best_batch = min(edit, key=lambda k: edit[k]["s_per_edit"]) if edit else None
    best = edit[best_batch]["s_per_edit"] if edit else None
    # 3. diffusers per image
    ref = time_diffusers(lp, plan) if clock.allows("diffusers") else None
    if ref:
        log(f"diffusers: {ref['s_per_image']:.4f} s/image")
    # 4. compiled at the best batch (last in-process step: it changes the loaded UNet)
    compiled = {"skipped": "time box"}
    if best_batch is None:
        compiled = {"skipped": "no plain edit was timed"}
    elif clock.allows("compiled", plan.compile_reserve_s):
        try:
            compiled = time_compiled(lp, plan, int(best_batch))
        except Exception as e:  # a compiler failure is a result to report, not a reason to lose the rest
            compiled = {"error": f"{type(e).__name__}: {str(e)[:1500]}"}
    log(f"compiled: {compiled}")
    del lp
    if plan.device == "cuda":
        torch.cuda.empty_cache()
    # 5. training, in subprocesses
    train = run_train(plan, clock, hard_s) if clock.allows("train") else {"skipped": "time box"}
    timed = [t for t in (best, compiled.get("s_per_edit")) if t is not None]
    fastest = min(timed) if timed else None
    return {
        "device": torch.cuda.get_device_name(0) if plan.device == "cuda" else "cpu",
        "edit": edit,
        "best_batch": int(best_batch) if best_batch else None,
        "best_s_per_edit": best,
        "diffusers_s_per_image": ref["s_per_image"] if ref else None,
        "diffusers": ref,
        "speedup_vs_diffusers": ref["s_per_image"] / best if ref and best else None,
        "compiled_s_per_edit": compiled.get("s_per_edit"),
        "compiled": compiled,
        "train": train,
        "fastest_s_per_edit": fastest,
        "target_s_per_edit": TARGET_S_PER_EDIT,
        "meets_target": fastest is not None and fastest <= TARGET_S_PER_EDIT,
        "setup_s": setup_s,
        "config": {"model": label, "dtype": plan.dtype, "size": plan.size, "steps": plan.steps,
                   "guidance": 6.0, "scheduler": "ddim", "batches": list(plan.batches),
                   "timed_repeats": plan.repeats,
                   "warmup_steps": min(WARMUP_STEPS, plan.steps), "diffusers_images": plan.n_ref,
                   "torch": torch.__version__, "threads": torch.get_num_threads()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny models, seconds")
    ap.add_argument("--budget-s", type=float, default=420.0, help="no measurement starts after this")
    ap.add_argument("--hard-s", type=float, default=465.0, help="the training subprocess is killed at this")
    args = ap.parse_args()
    plan = SMOKE if args.smoke else GPU
    if plan.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            sys.exit("bench/gpu.py: no CUDA device (use --smoke for the CPU check)")
    if plan.threads:
        import torch

        torch.set_num_threads(plan.threads)
    clock = Clock(args.budget_s)
    result = measure(plan, clock, args.hard_s)
    result |= {"skipped": clock.skipped, "total_s": clock.elapsed()}
    result["sdxl"] = run_sdxl(args.smoke)
    result["masks"] = run_masks(plan.device, args.smoke)
    print(json.dumps(result))


def run_masks(device: str, smoke: bool) -> dict:
    """Issue 29's section (bench/gpu_masks.py): automatic masks, ours vs stock, same run."""
    from bench.gpu_masks import measure_masks

    t = time.perf_counter()
    try:
        out = measure_masks(device, smoke)
    except Exception as e:  # a failure here is a result to report, not a reason to lose the rest
        out = {"error": f"{type(e).__name__}: {str(e)[:1500]}"}
    log(f"masks: {out}")
    return out | {"section_s": time.perf_counter() - t}


if __name__ == "__main__":
    main()
