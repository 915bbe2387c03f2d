"""Does the shard keep a GPU busy on real photo sizes? A shard over 12 MP JPEG photos with a
stand-in model that takes a fixed time per batch.

Photos: DreamBench photos (../shared/dreambench, or the repo's samples/concepts/dog when absent)
upscaled to 4000x3000 (12 MP) and saved as JPEG q92. Each item edits a box region at working
size 512 (crop, resize, paste back at full size) and writes the 12 MP output PNG and its region
PNG, through the real shard loop (`lcd.jobs.editing.run_edit_shard`). The model is replaced by
a stand-in: `lcd.edit.engine._run_batch` sleeps `--model-s` seconds per batch (the GPU's time;
default 0.4 s per edit, the issue's H100 target, times the batch) and returns the input crops.

Measured, each from a fresh output folder: the CPU work alone (stand-in 0 s: what the reader
and writer cost per batch), then overlap on and off with the stand-in. overlap_efficiency =
model_s_per_batch / end_to_end_s_per_batch (1.0: the model is the only bottleneck).
The last printed line is one JSON object.

    PYTHONPATH=. python bench/pipeline.py [--items 48] [--batch 4] [--model-s 1.6] [--png-level 1] [--format png]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

W, H = 4000, 3000


def make_photos(root: Path, n: int) -> list[Path]:
    """n 12 MP JPEGs upscaled (Lanczos) from DreamBench photos."""
    from PIL import Image

    shared = REPO.parent / "shared" / "dreambench"
    src = sorted(shared.glob("*/0*.jpg")) if shared.is_dir() else []
    src = src[:: max(1, len(src) // n)] if src else sorted((REPO / "samples" / "concepts" / "dog").glob("*.jpg"))
    out = []
    for i in range(n):
        p = root / f"photo{i:02d}.jpg"
        Image.open(src[i % len(src)]).convert("RGB").resize((W, H), Image.LANCZOS).save(p, quality=92)
        out.append(p)
    return out


def manifest(photos: list[Path], n: int):
    """n items over the photos, each a different box (about 1/9 of the photo) and seed."""
    from lcd.jobs.manifest import ManifestItem

    items = []
    for i in range(n):
        x0, y0 = 600 + 97 * (i % 11), 500 + 71 * (i % 13)
        items.append(ManifestItem(id=f"item{i:04d}", image=str(photos[i % len(photos)]),
                                  select=f"box:{x0},{y0},{x0 + 1300},{y0 + 1000}", prompt="a photo of a dog", seed=i))
    return items


def run(items, lp, cfg, out: Path, model_s: float) -> dict:
    """One shard from an empty output folder; -> seconds, batches, counts."""
    import lcd.edit.engine as engine
    from lcd.config import ModelsConfig
    from lcd.jobs.editing import run_edit_shard

    def standin(lp_, prepared, cfg_, prompts):
        time.sleep(model_s)
        return [p.crop for p in prepared]  # the working-size crops, as a model would return them

    real, engine._run_batch = engine._run_batch, standin
    shutil.rmtree(out, ignore_errors=True)
    try:
        t0 = time.perf_counter()
        rep = run_edit_shard(items, out_root=out, cfg=cfg, models=ModelsConfig(), loader=lambda cdir: (lp, []))
        secs = time.perf_counter() - t0
    finally:
        engine._run_batch = real
    counts = rep.counts()
    assert counts["edited"] == len(items), (counts, rep.failures[:2])
    batches = -(-len(items) // cfg.batch_size)
    return {"seconds": round(secs, 3), "batches": batches, "s_per_batch": round(secs / batches, 3)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=48, help="items of the shard (12 batches of 4: the first read and last write are not overlapped)")
    ap.add_argument("--photos", type=int, default=6)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--model-s", type=float, default=None, help="stand-in seconds per batch (default 0.4 x batch)")
    ap.add_argument("--png-level", type=int, default=1)
    ap.add_argument("--format", choices=("png", "webp"), default="png", help="edit.output_format")
    ap.add_argument("--io-threads", type=int, default=0)
    args = ap.parse_args()
    model_s = args.model_s if args.model_s is not None else 0.4 * args.batch

    from lcd.config import EditConfig
    from lcd.models.loader import load_sd_pipeline
    from lcd.models.tiny import write_tiny_sd

    root = Path(tempfile.mkdtemp(prefix="lcd-bench-pipeline-"))
    try:
        t0 = time.perf_counter()
        photos = make_photos(root, args.photos)
        prep_s = time.perf_counter() - t0
        lp = load_sd_pipeline(write_tiny_sd(root / "sd"))  # tokenizer, latent factor, pins; the model is stood in
        items = manifest(photos, args.items)
        base = dict(size=512, batch_size=args.batch, png_compress_level=args.png_level, io_threads=args.io_threads,
                    output_format=args.format)
        cpu = run(items, lp, EditConfig(**base, overlap=False), root / "out-cpu", 0.0)
        on = run(items, lp, EditConfig(**base, overlap=True), root / "out-on", model_s)
        off = run(items, lp, EditConfig(**base, overlap=False), root / "out-off", model_s)
        ext = "." + args.format
        same = all((root / "out-on" / "edits" / f"{it.id}{ext}").read_bytes()
                   == (root / "out-off" / "edits" / f"{it.id}{ext}").read_bytes() for it in items)
        out_bytes = sum(f.stat().st_size for f in (root / "out-on" / "edits").glob("*" + ext)) // len(items)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps({
        "model_s_per_batch": model_s,
        "end_to_end_s_per_batch": on["s_per_batch"],
        "overlap_efficiency": round(model_s / on["s_per_batch"], 3),
        "no_overlap_s_per_batch": off["s_per_batch"],
        "no_overlap_efficiency": round(model_s / off["s_per_batch"], 3),
        "cpu_only_s_per_batch": cpu["s_per_batch"],
        "outputs_identical_on_off": same,
        "image_px": W * H, "image_size": f"{W}x{H}", "working_size": 512,
        "items": args.items, "batch": args.batch, "batches": on["batches"],
        "output_format": args.format, "png_compress_level": args.png_level, "io_threads": args.io_threads or min(8, os.cpu_count() or 1),
        "output_bytes_mean": out_bytes, "cpus": os.cpu_count(), "photo_prep_s": round(prep_s, 1),
    }))


if __name__ == "__main__":
    main()
