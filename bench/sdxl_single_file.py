"""A full-size SDXL single-file checkpoint, as users download it, through `lcd edit --model FILE`.

Writes SDXL base's exact architecture (UNet 2,567M with 70 cross-attentions of 2048-wide context,
CLIP ViT-L 123M, OpenCLIP ViT-bigG 695M, the x8 VAE 84M; configs from lcd/models/configs/sdxl)
with random weights in the original single-file layout of Stability's generative-models
(`conditioner.embedders.0/1`, `model.diffusion_model`, `first_stage_model`), in fp16 (~6.9 GB,
what `sd_xl_base_1.0.safetensors` holds). The file is streamed one component at a time (never
the whole model in memory, never float32) by a process of its own, then, each in its own process
so peak memory is its own:

1. `load_sd` on the file (lcd's loader: family and kind read off the keys, bundled configs, no
   hub, no config setting), timed;
2. `lcd --params <params.sdxl.yaml on the CPU> edit --model FILE` on one 1024x1024 photo with
   1 step, HF_HUB_OFFLINE=1 and an empty HF_HOME.

On the CPU the model runs in bfloat16 (`--dtype`; float32 weights alone would be 14 GB) with the
float32 VAE params.sdxl.yaml asks for. Speed and memory do not depend on weight values. The
checkpoint is removed afterwards. Needs ~16 GB of free memory: run it under
`flock /tmp/lcd-bigmem.lock python bench/sdxl_single_file.py`. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")
PREFIX = {"unet": "model.diffusion_model.", "vae": "first_stage_model.",
          "text_encoder": "conditioner.embedders.0.", "text_encoder_2": "conditioner.embedders.1."}

LOAD_LCD = """
import json, resource, sys, time
t = time.perf_counter()
from lcd.models.config import ModelsConfig
from lcd.models.pipeline import load_sd
sd = load_sd(ModelsConfig(sd=sys.argv[1], dtype=sys.argv[2], vae_dtype="float32", device="cpu"))
dt = time.perf_counter() - t
p = sd.lp.pipe
n = {c: sum(x.numel() for x in getattr(p, c).parameters()) for c in ("unet", "vae", "text_encoder", "text_encoder_2")}
print(json.dumps({"load_s": dt, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                  "params": n, "family": sd.lp.family, "pipeline": type(p).__name__, "source_kind": sd.lp.source.kind,
                  "unet_dtype": str(p.unet.dtype), "vae_dtype": str(p.vae.dtype),
                  "scheduler": type(p.scheduler).__name__}))
"""

CLI_EDIT = """
import json, resource, sys, time
t = time.perf_counter()
from lcd.cli import main
rc = main(sys.argv[1:])
print(json.dumps({"rc": rc, "wall_s": time.perf_counter() - t,
                  "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""


def _build(component: str, meta: bool, seed: int, kind: str = "sdxl"):
    """One SDXL component from the bundled configs: on the meta device (shapes only) or with
    PyTorch/transformers default init created directly in float16 (no float32 copy)."""
    import torch
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from lcd.models.bundled import CONFIGS
    from lcd.models.trust import read_config

    cfg = read_config(CONFIGS / kind / component / "config.json")
    make = {"unet": lambda: UNet2DConditionModel.from_config(cfg), "vae": lambda: AutoencoderKL.from_config(cfg),
            "text_encoder": lambda: CLIPTextModel(CLIPTextConfig(**cfg)),
            "text_encoder_2": lambda: CLIPTextModelWithProjection(CLIPTextConfig(**cfg))}[component]
    torch.manual_seed(seed + COMPONENTS.index(component))
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float16)
    try:
        if meta:
            with init_empty_weights():
                return make().half()
        return make().half()  # a no-op but for a config whose torch_dtype transformers applies
    finally:
        torch.set_default_dtype(old)


def _ldm(parts: dict) -> dict:
    """to_ldm_state_dict over an object holding the four components (some on the meta device)."""
    from lcd.models.ldm_format import to_ldm_state_dict

    return to_ldm_state_dict(type("Parts", (), parts))


def write_checkpoint(path: Path, seed: int = 0, kind: str = "sdxl") -> dict:
    """Stream SDXL base's architecture (`kind`: a bundled SDXL config folder), random fp16
    weights, generative-models keys, to `path` as safetensors (8-byte header length, JSON
    header, then each tensor's bytes in order)."""
    t = time.perf_counter()
    meta = {c: _build(c, True, seed, kind) for c in COMPONENTS}
    shapes = _ldm(meta)
    order = [k for c in COMPONENTS for k in sorted(shapes) if k.startswith(PREFIX[c])]
    assert len(order) == len(shapes), "every key belongs to one component"
    header, offset = {"__metadata__": {"format": "pt", "lcd.bench": "sdxl random weights"}}, 0
    for k in order:
        n = shapes[k].numel() * 2
        header[k] = {"dtype": "F16", "shape": list(shapes[k].shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for c in COMPONENTS:
            real = _build(c, False, seed, kind)
            tensors = _ldm({**meta, c: real})
            for k in (k for k in order if k.startswith(PREFIX[c])):
                f.write(tensors[k].contiguous().numpy().tobytes())
            del real, tensors
    return {"write_s": time.perf_counter() - t, "file_bytes": path.stat().st_size, "tensors": len(order),
            "params": sum(v.numel() for v in shapes.values())}


def run_json(cmd: list[str], env: dict) -> dict:
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
    if out.returncode != 0:
        raise SystemExit(f"{cmd[:4]} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def cpu_params(work: Path, dtype: str) -> Path:
    """params.sdxl.yaml as it runs on this CPU: the model in `dtype`, its float32 VAE kept, 1 step."""
    import yaml

    raw = yaml.safe_load((REPO / "params.sdxl.yaml").read_text())
    raw["models"].update(device="cpu", dtype=dtype, variant=None)
    raw["edit"].update(steps=1, batch_size=1)
    out = work / "params.sdxl-cpu.yaml"
    out.write_text(yaml.safe_dump(raw))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", help="where to write the checkpoint (default a temp dir; removed after)")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32", "float16"])
    ap.add_argument("--keep", action="store_true", help="keep the checkpoint")
    ap.add_argument("--write-only", metavar="PATH", help=argparse.SUPPRESS)  # the writer's own process
    args = ap.parse_args()
    if args.write_only:
        print(json.dumps(write_checkpoint(Path(args.write_only))))
        return
    work = Path(args.dir or tempfile.mkdtemp(prefix="lcd-sdxl-"))
    work.mkdir(parents=True, exist_ok=True)
    ckpt = work / "sdxl-base-random-fp16.safetensors"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_HOME": str(work / "hf-home-empty"), "PYTHONPATH": str(REPO)}
    res: dict = {"bench": "single_file_sdxl", "steps": 1, "size": 1024, "dtype": args.dtype, "device": "cpu",
                 "free_disk_gb": shutil.disk_usage(work).free / 2**30}
    try:
        # its own process too: the allocator keeps what the writer freed, which the edit needs
        res["write"] = run_json([sys.executable, str(Path(__file__).resolve()), "--write-only", str(ckpt)], env)
        res["lcd_load"] = run_json([sys.executable, "-c", LOAD_LCD, str(ckpt), args.dtype], env)
        from PIL import Image

        Image.open(REPO / "samples/scenes/cat_00.jpg").convert("RGB").resize((1024, 1024)).save(work / "photo.png")
        Image.open(REPO / "samples/masks/cat_00.png").convert("L").resize((1024, 1024), Image.NEAREST).save(
            work / "mask.png")
        edit = run_json([sys.executable, "-c", CLI_EDIT, "--params", str(cpu_params(work, args.dtype)), "edit",
                         "--model", str(ckpt), "--image", str(work / "photo.png"), "--mask", str(work / "mask.png"),
                         "--prompt", "a photo of a dog", "--out", str(work / "out.png"), "--steps", "1",
                         "--size", "1024"], env)
        from lcd.io.images import read_png_meta

        meta = read_png_meta(work / "out.png")
        res["cli_edit"] = edit | {"model_kind": meta["model_source"]["kind"], "model_family": meta.get("model_family"),
                                  "scheduler_class": meta.get("scheduler_class"),
                                  "out_size": list(Image.open(work / "out.png").size)}
    finally:
        if not args.keep:
            ckpt.unlink(missing_ok=True)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
