"""bench/gpu.py's masks part: automatic masks, images/s of lcd.masks (bulk generator, several
images per encoder call) vs segment_anything's SamAutomaticMaskGenerator, in the same run.

GPU: SAM's ViT-H architecture with random weights (sam_model_registry["vit_h"], 636M
parameters), 32 points per side, DreamBench photos resized to 1024x1024; ours at
images_per_batch 4 in float32 and float16 encoder dtypes, stock one image per call. Random
weights score every candidate alike, so the hypernetworks' last layers are scaled x20 and the
two thresholds set at quantiles of the first photo's candidates (50% pass each filter, as in
bench/masks_compare.py). Speed does not depend on weight values. Smoke (CPU): the tiny SAM,
2 points per side, 2 photos at 256 px, images_per_batch 2.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _photos(n: int, side: int) -> list[np.ndarray]:
    from bench.masks_compare import photos

    return photos(REPO.parent / "shared" / "dreambench", n, side)


def _model(device: str, smoke: bool):
    import torch

    torch.manual_seed(0)
    if smoke:
        import tempfile

        from lcd.models.loader import load_sam
        from lcd.models.tiny import write_tiny_sam

        sam, _ = load_sam(write_tiny_sam(tempfile.mkdtemp() + "/sam"), "vit_tiny", device=device)
        label = "tiny SAM (lcd.models.tiny)"
    else:
        from segment_anything import sam_model_registry

        sam, label = sam_model_registry["vit_h"](checkpoint=None).to(device).eval(), "SAM ViT-H, random weights"
    with torch.no_grad():
        for mlp in sam.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(20.0)
            mlp.layers[-1].bias.mul_(20.0)
    return sam, label


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _ours(sam, cfg, images, batch: int, dtype: str, device: str) -> tuple[float, list]:
    from lcd.masks.config import MasksConfig
    from lcd.masks.predict import MaskPredictor

    mp = MaskPredictor(sam, MasksConfig(auto=cfg, images_per_batch=batch, encoder_dtype=dtype))
    out = []
    _sync(device)
    t = time.perf_counter()
    for i in range(0, len(images), batch):
        chunk = images[i:i + batch]
        for im, emb in zip(chunk, mp.embed(chunk)):
            out.append(mp.predict(im, [], embedding=emb))
    _sync(device)
    return time.perf_counter() - t, out


def _stock(sam, cfg, images, device: str) -> tuple[float, list]:
    from segment_anything import SamAutomaticMaskGenerator

    g = SamAutomaticMaskGenerator(sam, output_mode="binary_mask", **cfg.model_dump())
    _sync(device)
    t = time.perf_counter()
    out = [g.generate(im) for im in images]
    _sync(device)
    return time.perf_counter() - t, out


def _agreement(ours: list, stock: list) -> dict:
    same, ious = [], []
    for a, b in zip(ours, stock):
        same.append(len(a) == len(b))
        mine = [r.mask for r in a]
        for m in (s["segmentation"] for s in b):
            ious.append(max(((m & o).sum() / max(1, (m | o).sum()) for o in mine), default=0.0))
    return {"images_same_mask_count": float(np.mean(same)), "matched_mask_iou_mean": float(np.mean(ious)) if ious else None}


def measure_masks(device: str, smoke: bool) -> dict:
    """Images/s of ours (fp32 and fp16 encoder) vs stock on the same model and photos."""
    from segment_anything import SamPredictor

    from lcd.masks.amg import BulkMaskGenerator, candidate_scores
    from lcd.masks.config import AutoMaskConfig

    sam, label = _model(device, smoke)
    n, side, pps, batch = (2, 256, 2, 2) if smoke else (8, 1024, 32, 4)
    images = _photos(n, side)
    base = AutoMaskConfig(points_per_side=pps, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    iou, stab = candidate_scores(BulkMaskGenerator(sam, base, SamPredictor(sam)), images[0])
    t_iou = float(np.quantile(iou, 0.5))
    cfg = base.model_copy(update={"pred_iou_thresh": t_iou,
                                  "stability_score_thresh": float(np.quantile(stab[iou > t_iou], 0.5))})
    _ours(sam, cfg, images[:batch], batch, "float32", device)  # warm-up: kernels, allocator
    ours_s, ours = _ours(sam, cfg, images, batch, "float32", device)
    stock_s, stock = _stock(sam, cfg, images, device)
    half = "float16" if device == "cuda" else "bfloat16"
    half_s, half_out = _ours(sam, cfg, images, batch, half, device)
    return {
        "model": label, "images": len(images), "size": side, "points_per_side": pps, "images_per_batch": batch,
        "images_per_s_ours": len(images) / ours_s, "images_per_s_stock": len(images) / stock_s,
        "speedup": stock_s / ours_s, f"images_per_s_ours_{half}": len(images) / half_s,
        "agreement_vs_stock": _agreement(ours, stock), f"agreement_{half}_vs_stock": _agreement(half_out, stock),
        "settings": cfg.model_dump(),
    }
