"""Benchmark of concept fine-tuning: trainable-parameter counts, K/V-only vs full-UNet cost.

1. Counts on the exact SD1.5 UNet architecture (built on the meta device from its config: no
   weights needed): K/V must be 19,169,280 of 859,520,964.
2. Step time (fastest of the timed steps; the median is printed too) and peak memory of our training loop (`train_concepts`) with method 'kv' against
   method 'full', each in a fresh subprocess so peak memory is not shared: on CPU a reduced UNet
   of SD1.5's layout (default block_out_channels 128,256,512,512, cross-attention width 768) at
   64 px; with --device cuda SD1.5's UNet at 512 px (random weights). Memory is the process's
   peak RSS minus its RSS before the pipeline was built (CPU), or peak allocated GPU memory.
The last printed line is one JSON object.

    python bench/train.py [--device cpu|cuda] [--steps 4] [--resolution 64] [--batch-size 1]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SD15_UNET = dict(block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
                 layers_per_block=2, in_channels=4, out_channels=4, sample_size=64)
REDUCED_BLOCKS = (128, 256, 512, 512)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def build_pipeline(blocks, device: str):
    """SD1.5-layout UNet of width `blocks` + tiny VAE + 2-layer CLIP text encoder of width 768."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from lcd.models.loader import LoadedPipeline
    from lcd.models.sources import ModelSource
    from lcd.models.tiny import SD15_SCHEDULER, tiny_text_config, tiny_vae
    from lcd.models.tokenizer import write_clip_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**(SD15_UNET | {"block_out_channels": tuple(blocks)}))
    te_cfg = tiny_text_config(768)
    te_cfg.num_attention_heads, te_cfg.intermediate_size = 12, 3072
    tok_dir = write_clip_tokenizer(Path(tempfile.mkdtemp()) / "tok")
    pipe = StableDiffusionPipeline(vae=tiny_vae(), text_encoder=CLIPTextModel(te_cfg), unet=unet,
                                   tokenizer=CLIPTokenizer.from_pretrained(tok_dir),
                                   scheduler=DDIMScheduler(**SD15_SCHEDULER), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return LoadedPipeline(pipe.to(device), ModelSource(ref="bench-random", kind="folder", sha256="0" * 64))


def child(args) -> dict:
    """One training run of `args.mode`; returns step time and peak memory."""
    import torch
    from PIL import Image

    from lcd.train.config import ConceptSpec, TrainConfig
    from lcd.train.loop import train_concepts

    photos = Path(tempfile.mkdtemp())
    for f in sorted((REPO / "samples" / "concepts" / "dog").glob("*.jpg")):
        Image.open(f).convert("RGB").resize((args.resolution, args.resolution)).save(photos / f.name)
    cuda = args.device == "cuda"
    rss0 = _rss()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    blocks = SD15_UNET["block_out_channels"] if args.sd15 else REDUCED_BLOCKS
    lp = build_pipeline(blocks, args.device)
    cfg = TrainConfig(method=args.mode, resolution=args.resolution, batch_size=args.batch_size, steps=args.steps + 1,
                      min_photo_px=8, prior=False, checkpoint_every=0, progress=False,
                      mixed_precision=args.mixed_precision, gradient_checkpointing=False)
    stamps: list[float] = []

    def on_step(step, loss):
        if cuda:
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    train_concepts(lp, [ConceptSpec(photos=str(photos), class_word="dog")], cfg, on_step=on_step)
    gaps = sorted(b - a for a, b in zip(stamps, stamps[1:]))  # the first step (warm-up) is excluded
    # the fastest step: on a shared machine other work only ever slows a step down
    step_s, step_median_s = gaps[0], gaps[len(gaps) // 2]
    if cuda:
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss0
    n_unet = sum(p.numel() for p in lp.pipe.unet.parameters())
    return {"mode": args.mode, "step_s": step_s, "step_median_s": step_median_s, "peak_mem_bytes": int(peak), "unet_params": n_unet}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--steps", type=int, default=4, help="timed steps (one warm-up step is added)")
    ap.add_argument("--resolution", type=int, default=None, help="default 64 on CPU, 512 on CUDA")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"])
    ap.add_argument("--sd15", action="store_true", help="full-width SD1.5 UNet (default on CUDA)")
    ap.add_argument("--child", dest="mode", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.resolution is None:
        args.resolution = 512 if args.device == "cuda" else 64
    args.sd15 = args.sd15 or args.device == "cuda"
    if args.mode:
        print(json.dumps(child(args)))
        return

    from lcd.train.params import count_params

    kv = count_params(SD15_UNET, "kv")
    runs = {}
    for mode in ("kv", "full"):
        cmd = [sys.executable, __file__, "--child", mode, "--device", args.device, "--steps", str(args.steps),
               "--resolution", str(args.resolution), "--batch-size", str(args.batch_size),
               "--mixed-precision", args.mixed_precision] + (["--sd15"] if args.sd15 else [])
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"bench child {mode} failed:\n{out.stderr[-3000:]}")
        runs[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        print(json.dumps(runs[mode]))
    result = {
        "sd15_unet_params": kv["unet"],
        "sd15_kv_params": kv["trainable"],
        "sd15_kv_layers": kv["tensors"] // 2,
        "sd15_kv_fraction": kv["trainable"] / kv["unet"],
        "sd15_crossattn_params": count_params(SD15_UNET, "crossattn")["trainable"],
        "sd15_lora_r4_params": count_params(SD15_UNET | {"lora_rank": 4}, "lora")["trainable"],
        "step_s_kv": runs["kv"]["step_s"],
        "step_s_full": runs["full"]["step_s"],
        "step_median_s_kv": runs["kv"]["step_median_s"],
        "step_median_s_full": runs["full"]["step_median_s"],
        "peak_mem_bytes_kv": runs["kv"]["peak_mem_bytes"],
        "peak_mem_bytes_full": runs["full"]["peak_mem_bytes"],
        "time_ratio_kv_vs_full": runs["kv"]["step_s"] / runs["full"]["step_s"],
        "memory_ratio_kv_vs_full": runs["kv"]["peak_mem_bytes"] / runs["full"]["peak_mem_bytes"],
        "targets": {"time_ratio_max": 0.5, "memory_ratio_max": 0.6},
        "config": {"unet_block_out_channels": list(SD15_UNET["block_out_channels"] if args.sd15 else REDUCED_BLOCKS),
                   "unet_params": runs["kv"]["unet_params"], "cross_attention_dim": 768,
                   "resolution": args.resolution, "batch_size": args.batch_size, "timed_steps": args.steps,
                   "step_time": "fastest timed step (median also given)",
                   "mixed_precision": args.mixed_precision, "prior": False, "loop": "lcd.train.loop.train_concepts",
                   "memory": "peak allocated" if args.device == "cuda" else "peak RSS minus RSS before model build"},
        "device": args.device if args.device != "cuda" else f"cuda:{__import__('torch').cuda.get_device_name(0)}",
        "threads": __import__("torch").get_num_threads(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
