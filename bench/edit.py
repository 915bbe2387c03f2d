"""Throughput of the batched edit against diffusers' StableDiffusionInpaintPipeline per image.

Same weights, scheduler, steps, guidance and working size, measured in the same process. The
default is a reduced CPU config on the tiny models (written to a temp dir if --model is not
given); on a GPU pass --model stable-diffusion-v1-5/stable-diffusion-v1-5 --device cuda
--size 512 --steps 60. `--sd15` times SD1.5's full architecture with random weights
(bench/sd15_random.py, written to a temp dir and removed after) at 512 px, 2 steps, batch 2,
one timed repeat unless given. The reference runs DDIM built from the model's scheduler config,
as ours does (SD1.5 folders ship PNDM, whose PLMS start costs an extra UNet call). The last line
printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lcd.config import EditConfig
from lcd.edit.engine import EditItem, edit_images
from lcd.models.loader import load_sd_pipeline

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
# --sd15 defaults; any flag given explicitly wins
SD15_DEFAULTS = dict(size=512, steps=2, batch=2, repeats=1)
PLAIN_DEFAULTS = dict(size=256, steps=20, batch=8, repeats=2)


def scenes(n: int, size: int) -> list[EditItem]:
    rng = np.random.RandomState(0)
    items = []
    for i in range(n):
        img = rng.randint(0, 256, (size, size, 3), dtype=np.uint8)
        mask = np.zeros((size, size), bool)
        mask[size // 4 : 3 * size // 4, size // 5 : 4 * size // 5] = True
        items.append(EditItem(img, mask, f"a photo of a dog number {i}", seed=i, name=f"scene{i}"))
    return items


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--sd15", action="store_true",
                    help="SD1.5 architecture, random weights (bench/sd15_random.py)")
    ap.add_argument("--size", type=int)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--batch", type=int)
    ap.add_argument("--repeats", type=int)
    args = ap.parse_args()
    for k, v in (SD15_DEFAULTS if args.sd15 else PLAIN_DEFAULTS).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.sd15 and args.model:
        ap.error("--sd15 and --model are exclusive")
    model, tmp = args.model, None
    if model is None:
        tmp = tempfile.mkdtemp(prefix="lcd-bench-edit-")
        if args.sd15:
            from bench.sd15_random import write_sd15_random

            model = str(write_sd15_random(tmp + "/sd15", dtype=args.dtype))
        else:
            from lcd.models.tiny import write_tiny_sd

            model = str(write_tiny_sd(tmp + "/sd"))
    try:
        lp = load_sd_pipeline(model, dtype=args.dtype, device=args.device)
    finally:
        if tmp is not None:  # weights are in memory now; the sd15 folder is GBs
            shutil.rmtree(tmp, ignore_errors=True)
    label = "sd15-random" if args.sd15 else (model if args.model else "tiny (lcd.models.tiny)")
    cfg = EditConfig(steps=args.steps, size=args.size, guidance=6.0, batch_size=args.batch)
    items = scenes(args.batch, args.size)

    from diffusers import DDIMScheduler, StableDiffusionInpaintPipeline

    ref = StableDiffusionInpaintPipeline(**(lp.pipe.components | {
        "scheduler": DDIMScheduler.from_config(lp.pipe.scheduler.config)}))
    ref.set_progress_bar_config(disable=True)

    def run_ours():
        edit_images(lp, items, cfg)

    def run_ref():
        for it in items:
            ref(it.prompt, image=Image.fromarray(it.image), mask_image=Image.fromarray(it.mask.astype(np.uint8) * 255),
                height=args.size, width=args.size, num_inference_steps=args.steps, guidance_scale=6.0,
                generator=torch.Generator("cpu").manual_seed(it.seed))

    timings = {}
    for name, fn in (("ours", run_ours), ("diffusers", run_ref)):
        fn()  # warm-up (allocator, kernels)
        best = float("inf")
        for _ in range(args.repeats):
            sync(args.device)
            t = time.perf_counter()
            fn()
            sync(args.device)
            best = min(best, time.perf_counter() - t)
        timings[name] = best
        print(f"{name}: {args.batch} images in {best:.3f}s", flush=True)
    ours, base = args.batch / timings["ours"], args.batch / timings["diffusers"]
    print(json.dumps({
        "images_per_s": round(ours, 4),
        "baseline_images_per_s": round(base, 4),
        "speedup_vs_diffusers": round(ours / base, 3),
        "batch": args.batch,
        "config": {"model": label, "size": args.size,
                   "steps": args.steps, "guidance": 6.0, "dtype": args.dtype, "threads": torch.get_num_threads()},
        "device": args.device if not args.device.startswith("cuda") else torch.cuda.get_device_name(),
    }))


if __name__ == "__main__":
    main()
