"""Side by side: lcd.masks.amg's bulk generator vs segment_anything's SamAutomaticMaskGenerator
on the same random-weight SAM, settings and DreamBench photos, at 1 MP (1024x1024, SAM's working
size) and upscaled to 12 MP (3464x3464). `python bench/masks.py --compare` runs it.

Model: the tiny SAM of lcd.models.tiny by default (SAM's real 1024 px working size, prompt
encoder and full mask decoder; a narrow 2-block ViT encoder) because the decoder and the
post-processing, which this compares, are SAM's own at full size, while a vit_b encoder would
add ~1 min of identical encoder time per image on 2 CPU cores. `--sam-type vit_b` builds a
random vit_b instead. Random weights give logits of |x| < 2, which SAM's stability offset of
1.0 scores ~0 for every candidate, so the hypernetworks' last layers are scaled by
`--logit-scale` (same model for both generators). The two thresholds are then set at
quantiles of the first photo's candidate scores so that `--keep-iou` of the candidates pass
pred_iou_thresh and `--keep-stability` of those pass stability_score_thresh.

Each (size, generator) runs in its own subprocess, so its peak RSS is its own. Stock at 12 MP
upsamples each point batch to 12 MP float logits (192 x 48 MB = 9 GB at 64 points), so it runs
`--stock-12mp-batch` points a batch on the first `--stock-12mp-points` grid points only; ours
runs the same subset too for the mask comparison, and its full-grid time is measured
separately. Stock's 12 MP time is extrapolated per point and marked so in the JSON.
The last line printed is one JSON object. Run it under `flock /tmp/lcd-bigmem.lock`.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SIDES = {"1mp": 1024, "12mp": 3464}


def photos(root: Path, n: int, side: int) -> list[np.ndarray]:
    """The first photo of the first `n` subjects (DreamBench, else samples/scenes), resized."""
    from PIL import Image

    subjects = sorted(p for p in root.iterdir() if p.is_dir()) if root.exists() else []
    files = [sorted(s.glob("*.jpg"))[0] for s in subjects if list(s.glob("*.jpg"))][:n]
    if not files:
        files = sorted((REPO / "samples" / "scenes").glob("*.jpg"))[:n]
    return [np.asarray(Image.open(f).convert("RGB").resize((side, side), Image.BICUBIC)) for f in files]


def load(args):
    import torch

    from lcd.models.loader import load_sam

    torch.manual_seed(0)
    if args.sam_type == "vit_tiny":
        from lcd.models.tiny import write_tiny_sam

        path = write_tiny_sam(tempfile.mkdtemp() + "/sam")
    else:
        from segment_anything import sam_model_registry

        path = Path(tempfile.mkdtemp()) / f"sam_{args.sam_type}.pth"
        torch.save(sam_model_registry[args.sam_type](checkpoint=None).state_dict(), path)
    sam, _ = load_sam(path, args.sam_type)
    with torch.no_grad():
        for mlp in sam.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(args.logit_scale)
            mlp.layers[-1].bias.mul_(args.logit_scale)
    return sam


def worker(args) -> dict:
    """One (size, generator) in this process: per-photo seconds and masks (RLE)."""
    import torch
    from segment_anything import SamAutomaticMaskGenerator, SamPredictor

    from lcd.masks.amg import BulkMaskGenerator
    from lcd.masks.config import AutoMaskConfig

    torch.set_num_threads(args.threads)
    sam = load(args)
    cfg = AutoMaskConfig(**json.loads(args.cfg))
    ims = photos(Path(args.dreambench), args.photos, SIDES[args.size])
    n_pts = args.points or cfg.points_per_side ** 2
    grid = BulkMaskGenerator(sam, cfg, SamPredictor(sam)).grids[0][:n_pts]
    out = []
    for im in ims:
        t = time.perf_counter()
        if args.generator == "stock":
            g = SamAutomaticMaskGenerator(sam, output_mode="coco_rle", point_grids=[grid], points_per_side=None,
                                          **cfg.model_dump(exclude={"points_per_side"}))
            masks = [m["segmentation"] for m in g.generate(im)]
        else:
            g = BulkMaskGenerator(sam, cfg, SamPredictor(sam), args.budget_mb)
            g.grids = [grid]
            masks = [m.rle for m in g.generate(im)]
        out.append({"s": time.perf_counter() - t, "masks": masks})
    return {"images": out, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "points": int(len(grid))}


def thresholds(args) -> dict:
    """pred_iou / stability thresholds at quantiles of the first 1 MP photo's candidates."""
    from segment_anything import SamPredictor

    from lcd.masks.amg import BulkMaskGenerator, candidate_scores
    from lcd.masks.config import AutoMaskConfig

    sam = load(args)
    base = AutoMaskConfig(points_per_side=args.points_per_side, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                          box_nms_thresh=args.box_nms)
    im = photos(Path(args.dreambench), 1, SIDES["1mp"])[0]
    iou, stab = candidate_scores(BulkMaskGenerator(sam, base, SamPredictor(sam)), im)
    t_iou = float(np.quantile(iou, 1 - args.keep_iou))
    t_stab = float(np.quantile(stab[iou > t_iou], 1 - args.keep_stability))
    return base.model_copy(update={"pred_iou_thresh": t_iou, "stability_score_thresh": t_stab}).model_dump()


def run_worker(args, size: str, generator: str, cfg: dict, points: int = 0) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--size", size, "--generator", generator, "--cfg", json.dumps(cfg),
           "--points", str(points), *common(args)]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if res.returncode != 0:
        raise SystemExit(f"worker {size}/{generator} failed: {res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def common(args) -> list[str]:
    return ["--dreambench", args.dreambench, "--photos", str(args.photos), "--sam-type", args.sam_type,
            "--logit-scale", str(args.logit_scale), "--threads", str(args.threads), "--budget-mb", str(args.budget_mb),
            "--points-per-side", str(args.points_per_side)]


def compare(ours: dict, stock: dict) -> dict:
    """Per image: same mask count? and each stock mask's best IoU with one of ours."""
    from lcd.masks.rle import decode_rle

    same, ious = [], []
    for a, b in zip(ours["images"], stock["images"]):
        same.append(len(a["masks"]) == len(b["masks"]))
        mine = [decode_rle(r) for r in a["masks"]]
        for r in b["masks"]:
            m = decode_rle(r)
            best = max(((m & o).sum() / max(1, (m | o).sum()) for o in mine), default=0.0)
            ious.append(float(best))
    return {"images_same_mask_count": float(np.mean(same)) if same else None,
            "matched_mask_iou_mean": float(np.mean(ious)) if ious else None, "stock_masks": len(ious)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dreambench", default=str(REPO.parent / "shared" / "dreambench"))
    ap.add_argument("--photos", type=int, default=1)
    ap.add_argument("--points-per-side", type=int, default=32)
    ap.add_argument("--sam-type", default="vit_tiny", choices=["vit_tiny", "vit_b"])
    ap.add_argument("--logit-scale", type=float, default=20.0)
    ap.add_argument("--keep-iou", type=float, default=0.5)
    ap.add_argument("--keep-stability", type=float, default=0.5)
    ap.add_argument("--box-nms", type=float, default=0.7)
    ap.add_argument("--budget-mb", type=float, default=1024.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--stock-12mp-points", type=int, default=64)
    ap.add_argument("--stock-12mp-batch", type=int, default=16)
    ap.add_argument("--compare", action="store_true")  # accepted when called through bench/masks.py
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--size", default="1mp")
    ap.add_argument("--generator", default="bulk")
    ap.add_argument("--cfg", default="{}")
    ap.add_argument("--points", type=int, default=0)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return
    t0 = time.perf_counter()
    cfg = thresholds(args)
    n_full = args.points_per_side ** 2
    r = {"1mp": {g: run_worker(args, "1mp", g, cfg) for g in ("bulk", "stock")}}
    sub = args.stock_12mp_points
    r["12mp"] = {"bulk": run_worker(args, "12mp", "bulk", cfg),
                 "bulk_subset": run_worker(args, "12mp", "bulk", cfg, sub),
                 "stock_subset": run_worker(args, "12mp", "stock", cfg | {"points_per_batch": args.stock_12mp_batch},
                                            sub)}
    sec = lambda w: sum(i["s"] for i in w["images"])  # noqa: E731
    n = args.photos
    ours_s = sec(r["1mp"]["bulk"]) + sec(r["12mp"]["bulk"])
    stock_12_s = sec(r["12mp"]["stock_subset"]) * n_full / sub  # extrapolated per point
    stock_s = sec(r["1mp"]["stock"]) + stock_12_s
    c1, c12 = compare(r["1mp"]["bulk"], r["1mp"]["stock"]), compare(r["12mp"]["bulk_subset"], r["12mp"]["stock_subset"])
    cmp_all = {"images_same_mask_count": float(np.mean([c1["images_same_mask_count"], c12["images_same_mask_count"]])),
               "matched_mask_iou_mean": float(np.mean([c1["matched_mask_iou_mean"] or 0, c12["matched_mask_iou_mean"] or 0]))}
    print(json.dumps({
        "images_per_s_ours": 2 * n / ours_s, "images_per_s_stock": 2 * n / stock_s, "speedup": stock_s / ours_s,
        "speedup_1mp": sec(r["1mp"]["stock"]) / sec(r["1mp"]["bulk"]),
        "speedup_12mp": stock_12_s / sec(r["12mp"]["bulk"]),
        "peak_rss_mb_1mp": r["1mp"]["bulk"]["peak_rss_mb"], "peak_rss_mb_12mp": r["12mp"]["bulk"]["peak_rss_mb"],
        "stock_peak_rss_mb_1mp": r["1mp"]["stock"]["peak_rss_mb"],
        "stock_peak_rss_mb_12mp": r["12mp"]["stock_subset"]["peak_rss_mb"],
        **cmp_all, "compare_1mp": c1, "compare_12mp_subset": c12,
        "masks_per_image_ours_1mp": float(np.mean([len(i["masks"]) for i in r["1mp"]["bulk"]["images"]])),
        "s_per_image": {"ours_1mp": sec(r["1mp"]["bulk"]) / n, "stock_1mp": sec(r["1mp"]["stock"]) / n,
                        "ours_12mp": sec(r["12mp"]["bulk"]) / n, "stock_12mp_extrapolated": stock_12_s / n,
                        "stock_12mp_subset_measured": sec(r["12mp"]["stock_subset"]) / n},
        "stock_12mp": f"measured on the first {sub} of {n_full} grid points at points_per_batch "
                      f"{args.stock_12mp_batch} (64 does not fit beside other work: ~9 GB a batch), time "
                      "extrapolated per point; its peak RSS is at that batch",
        "photos": n, "points_per_side": args.points_per_side, "settings": cfg,
        "thresholds": f"quantiles: {args.keep_iou:.0%} of candidates pass pred_iou_thresh, {args.keep_stability:.0%} "
                      "of those pass stability_score_thresh (an assumption: no published per-filter survival "
                      "shares of real SAM were found; SA-1B reports ~100 kept masks per image after NMS)",
        "model": f"{args.sam_type} random weights, hypernetwork logits x{args.logit_scale}: SAM's decoder and "
                 "post-processing at full size; the tiny ViT encoder is the same time for both generators",
        "threads": args.threads, "budget_mb": args.budget_mb, "total_s": time.perf_counter() - t0,
    }))


if __name__ == "__main__":
    main()
