"""Bulk SAM masks on real DreamBench photos: storage size (Parquet RLE vs PNG per mask),
decode speed of the read API, and encoder passes per image.

Default: the tiny random-weight SAM (written to a temp dir) on CPU over the first photo of each
of --subjects DreamBench subjects, automatic masks + 3 prompts per image. For real numbers pass
--sam /weights/sam_vit_h_4b8939.pth --sam-type vit_h --device cuda --points-per-side 32.
Random weights give blobby masks (upsampled low-res logits); real SAM masks have more detailed
edges, so their RLE is longer - but PNG grows with edge length too. The last line printed is
one JSON object. Run from the repo root: `PYTHONPATH=. python bench/masks.py`.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from lcd.masks.bulk import compute_masks
from lcd.masks.config import AutoMaskConfig, MasksConfig
from lcd.masks.manifest import ManifestItem
from lcd.masks.store import part_paths, read_masks
from lcd.models.loader import load_sam

PROMPTS = json.dumps([{"points": [[256, 256]]}, {"points": [[128, 300], [400, 100]], "labels": [1, 0]},
                      {"box": [96, 96, 416, 416]}])


def png_bytes(mask: np.ndarray, mode: str) -> int:
    """Bytes of one mask PNG. 'cv2': 8-bit grey with cv2.imwrite's defaults, as SAM's own
    scripts/amg.py writes masks (the files this table replaces); 'L' / '1': 8-bit / 1-bit PNG
    with PIL's optimize=True (the smallest PNG a careful user could write)."""
    if mode == "cv2":
        import cv2

        return len(cv2.imencode(".png", mask.astype(np.uint8) * 255)[1])
    buf = io.BytesIO()
    im = Image.fromarray(mask.astype(np.uint8) * 255, mode="L")
    (im.convert("1") if mode == "1" else im).save(buf, format="PNG", optimize=True)
    return buf.tell()


def photo_region_masks(image: np.ndarray, k: int = 5, min_frac: float = 0.005) -> list[np.ndarray]:
    """Realistic region masks of a photo without SAM weights: colour k-means, connected
    components, morphological smoothing. A stand-in for real SAM output's edge statistics (the
    random-weight SAM's masks are high-frequency texture, the worst case for any mask codec)."""
    import cv2

    small = cv2.GaussianBlur(image, (7, 7), 0)
    lab = cv2.cvtColor(small, cv2.COLOR_RGB2LAB).reshape(-1, 3).astype(np.float32)
    crit = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 20, 1.0)
    cv2.setRNGSeed(0)
    _, labels, _ = cv2.kmeans(lab, k, None, crit, 2, cv2.KMEANS_PP_CENTERS)
    labels = labels.reshape(image.shape[:2])
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))
    out = []
    for c in range(k):
        n, comp = cv2.connectedComponents((labels == c).astype(np.uint8))
        for j in range(1, n):
            m = (comp == j).astype(np.uint8)
            m = cv2.morphologyEx(cv2.morphologyEx(m, cv2.MORPH_OPEN, kernel), cv2.MORPH_CLOSE, kernel)
            if m.sum() >= min_frac * m.size:
                out.append(m.astype(bool))
    return out


def storage_and_decode(out: Path, image_ids: list[str], repeats: int) -> dict:
    """Parquet bytes (all columns) per mask vs PNG per mask, and read-API decode rate."""
    import pyarrow.parquet as pq

    t0 = time.perf_counter()
    decoded = 0
    for _ in range(repeats):
        for i in image_ids:
            decoded += read_masks(out, i)[1].shape[0]
    decode_s = time.perf_counter() - t0
    parquet_bytes = sum(p.stat().st_size for p in part_paths(out))
    png_cv = png_l = png_1 = n = 0
    for i in image_ids:
        for m in read_masks(out, i)[1]:
            png_cv += png_bytes(m, "cv2")
            png_l += png_bytes(m, "L")
            png_1 += png_bytes(m, "1")
            n += 1
    rle = pq.read_table(out / "masks", columns=["rle"]).column("rle").combine_chunks()
    counts_bytes = sum(len(c) for c in rle.field("counts").to_pylist())
    return {
        "masks": n,
        "bytes_ratio_rle_vs_png": round(parquet_bytes / png_cv, 4),  # vs SAM amg.py's PNGs
        "bytes_ratio_rle_vs_png_optimized": round(parquet_bytes / png_l, 4),
        "bytes_ratio_rle_vs_png_1bit": round(parquet_bytes / png_1, 4),
        "parquet_bytes_per_mask": round(parquet_bytes / n, 1),
        "rle_counts_bytes_per_mask": round(counts_bytes / n, 1),
        "png_bytes_per_mask": round(png_cv / n, 1),
        "png_optimized_bytes_per_mask": round(png_l / n, 1),
        "png_1bit_bytes_per_mask": round(png_1 / n, 1),
        "masks_decoded_per_s": round(decoded / decode_s, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    repo = Path(__file__).resolve().parents[1]
    found = [p for p in (repo.parent / "shared" / "dreambench", repo.parents[1] / "shared" / "dreambench") if p.exists()]
    ap.add_argument("--dreambench", default=str(found[0] if found else repo.parent / "shared" / "dreambench"))
    ap.add_argument("--subjects", type=int, default=6)
    ap.add_argument("--sam")
    ap.add_argument("--sam-type", default="vit_tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--points-per-side", type=int, default=8)
    ap.add_argument("--decode-repeats", type=int, default=3)
    args = ap.parse_args()

    root = Path(args.dreambench)
    subjects = sorted(p for p in root.iterdir() if p.is_dir())[: args.subjects]
    photos = [sorted(s.glob("*.jpg"))[0] for s in subjects]
    items = [ManifestItem(f"{p.parent.name}/{p.stem}", str(p), PROMPTS) for p in photos]
    ckpt = args.sam
    if ckpt is None:
        from lcd.models.tiny import write_tiny_sam

        ckpt = str(write_tiny_sam(tempfile.mkdtemp() + "/sam"))
    sam, src = load_sam(ckpt, args.sam_type, device=args.device)
    thr = 0.0 if args.sam_type == "vit_tiny" else None  # random weights score low: keep everything
    auto = AutoMaskConfig(points_per_side=args.points_per_side,
                          **({"pred_iou_thresh": thr, "stability_score_thresh": thr} if thr is not None else {}))
    cfg = MasksConfig(auto=auto)
    out = Path(tempfile.mkdtemp()) / "masks-out"

    # 1. bulk compute, counting real image-encoder forward passes
    calls: list[int] = []
    hook = sam.image_encoder.register_forward_hook(lambda *a: calls.append(1))
    t0 = time.perf_counter()
    summary = compute_masks(items, sam, {"type": args.sam_type, "ref": src.ref, "sha256": src.sha256}, cfg, out)
    compute_s = time.perf_counter() - t0
    hook.remove()

    # 2. storage and decode of what SAM produced
    ids = [it.image_id for it in items]
    sam_stats = storage_and_decode(out, ids, args.decode_repeats)

    # 3. the same store on realistic region masks of the same photos (see photo_region_masks)
    from lcd.masks.manifest import decode_image, fetch_bytes, sha256_bytes
    from lcd.masks.predict import MaskRecord
    from lcd.masks.store import image_rows, write_part

    out2 = out.parent / "photo-regions"
    rows, images = [], []
    for it in items:
        data = fetch_bytes(it.image, it.image_id)
        img = decode_image(data, it.image_id)
        recs = [MaskRecord(m, "auto", 1.0, 1.0) for m in photo_region_masks(img)]
        h, w = img.shape[:2]
        rows += image_rows(it.image_id, it.image, sha256_bytes(data), w, h, recs, {"type": "kmeans-regions"})
        images.append({"image_id": it.image_id, "image_sha256": sha256_bytes(data), "width": w, "height": h})
    write_part(out2, rows, images, {}, cfg.row_group_rows)
    photo_stats = storage_and_decode(out2, ids, args.decode_repeats)

    result = {
        "device": args.device, "sam_type": args.sam_type, "images": len(items),
        "image_size": list(Image.open(photos[0]).size), "points_per_side": args.points_per_side,
        **sam_stats,
        "encoder_passes_per_image": len(calls) / len(items),
        "compute_s_per_image": round(compute_s / len(items), 3),
        "failed": summary.failed,
        "photo_region_masks": photo_stats,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
