"""A full-size SD1.5 single-file checkpoint, as users download it, through `lcd edit --model FILE`.

Writes SD1.5's exact architecture (UNet 860M, VAE 84M, CLIP ViT-L/14 text encoder 123M, configs
from lcd/models/configs/sd15) with random weights in the original LDM single-file layout, in fp16
(about 2 GB: what `v1-5-pruned-emaonly.safetensors` holds), then, each in its own process so peak
memory is its own:

1. `load_sd` on the file (lcd's loader: bundled configs, no hub, no config setting);
2. the peer: diffusers' stock `StableDiffusionPipeline.from_single_file(FILE, config=<folder>)`,
   which needs a config folder (or the hub) for the same file;
3. `lcd edit --model FILE` on a 512x512 photo, `--steps 2`, with HF_HUB_OFFLINE=1.

Speed and memory do not depend on weight values. The checkpoint is removed afterwards. The last
line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

LOAD_LCD = """
import json, resource, sys, time
t = time.perf_counter()
from lcd.models.config import ModelsConfig
from lcd.models.pipeline import load_sd
sd = load_sd(ModelsConfig(sd=sys.argv[1], dtype="float32", device="cpu"))
dt = time.perf_counter() - t
n = sum(p.numel() for m in (sd.lp.pipe.unet, sd.lp.pipe.vae, sd.lp.pipe.text_encoder) for p in m.parameters())
print(json.dumps({"load_s": dt, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                  "params": n, "source_kind": sd.lp.source.kind, "scheduler": type(sd.lp.pipe.scheduler).__name__}))
"""

CLI_EDIT = """
import json, resource, sys, time
t = time.perf_counter()
from lcd.cli import main
rc = main(sys.argv[1:])
print(json.dumps({"rc": rc, "wall_s": time.perf_counter() - t,
                  "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""

LOAD_PEER = """
import json, resource, sys, time
t = time.perf_counter()
from diffusers import StableDiffusionPipeline
from lcd.models.bundled import bundled_config_dir
with bundled_config_dir("sd15") as cfg:
    pipe = StableDiffusionPipeline.from_single_file(sys.argv[1], config=str(cfg), local_files_only=True,
                                                    safety_checker=None, requires_safety_checker=False)
dt = time.perf_counter() - t
print(json.dumps({"load_s": dt, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""


def write_checkpoint(path: Path) -> dict:
    """SD1.5's architecture from the bundled configs, random weights, fp16, LDM keys -> `path`."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    from lcd.models.bundled import CONFIGS
    from lcd.models.ldm_format import to_ldm_state_dict

    t = time.perf_counter()
    torch.manual_seed(0)
    cfg = CONFIGS / "sd15"

    class Parts:  # what to_ldm_state_dict reads off a pipeline
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(cfg / "unet")).half()
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(cfg / "vae")).half()
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(cfg / "text_encoder")).half()

    sd = to_ldm_state_dict(Parts)
    save_file(sd, str(path))
    return {"write_s": time.perf_counter() - t, "file_bytes": path.stat().st_size, "tensors": len(sd)}


def run_json(cmd: list[str], env: dict) -> dict:
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
    if out.returncode != 0:
        raise SystemExit(f"{cmd[:4]} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", help="where to write the checkpoint (default a temp dir; removed after)")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--keep", action="store_true", help="keep the checkpoint")
    args = ap.parse_args()
    work = Path(args.dir or tempfile.mkdtemp(prefix="lcd-sd15-"))
    work.mkdir(parents=True, exist_ok=True)
    ckpt = work / "v1-5-random-fp16.safetensors"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_HOME": str(work / "hf-home-empty"), "PYTHONPATH": str(REPO)}
    res: dict = {"bench": "single_file_sd15", "steps": args.steps, "size": 512}
    try:
        res["write"] = write_checkpoint(ckpt)
        res["lcd_load"] = run_json([sys.executable, "-c", LOAD_LCD, str(ckpt)], env)
        res["peer_load"] = run_json([sys.executable, "-c", LOAD_PEER, str(ckpt)], env)
        res["load_ratio_lcd_over_peer"] = res["lcd_load"]["load_s"] / res["peer_load"]["load_s"]
        # the CLI edit: 512x512 photo, the sample mask scaled with it, params.yaml untouched but --model
        from PIL import Image

        Image.open(REPO / "samples/scenes/cat_00.jpg").convert("RGB").resize((512, 512)).save(work / "photo.png")
        Image.open(REPO / "samples/masks/cat_00.png").convert("L").resize((512, 512), Image.NEAREST).save(work / "mask.png")
        edit = run_json([sys.executable, "-c", CLI_EDIT, "edit", "--model", str(ckpt), "--image", str(work / "photo.png"),
                         "--mask", str(work / "mask.png"), "--prompt", "a photo of a dog", "--out", str(work / "out.png"),
                         "--steps", str(args.steps), "--size", "512"], env)
        from lcd.io.images import read_png_meta

        meta = read_png_meta(work / "out.png")
        res["cli_edit"] = edit | {"model_kind": meta["model_source"]["kind"], "scheduler_class": meta.get("scheduler_class"),
                                  "out_size": list(Image.open(work / "out.png").size)}
    finally:
        if not args.keep:
            ckpt.unlink(missing_ok=True)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
