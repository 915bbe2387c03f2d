"""Bulk SAM masks on real DreamBench photos: storage size (Parquet RLE vs PNG per mask),
decode speed of the read API, and encoder passes per image.

Default: the tiny random-weight SAM (written to a temp dir) on CPU over the first photo of each
of --subjects DreamBench subjects, automatic masks + 3 prompts per image. For real numbers pass
--sam /weights/sam_vit_h_4b8939.pth --sam-type vit_h --device cuda --points-per-side 32.

Random SAM weights give texture-like masks (thresholded noise logits), the worst case for any
mask codec and nothing like real SAM output. So the same photos are also stored with two
stand-ins made without SAM weights: `photo_region_masks` (colour k-means regions, ragged edges,
like automatic masks of background and parts) and `subject_masks` (GrabCut of the centred
subject, like the mask a user picks for an edit). Each block reports the same figures. The last
line printed is one JSON object. Run from the repo root: `PYTHONPATH=. python bench/masks.py`.

`--compare`: the bulk generator (lcd.masks.amg) against stock SamAutomaticMaskGenerator at 1 MP
and 12 MP, 32 points per side (bench/masks_compare.py; run it under flock /tmp/lcd-bigmem.lock).
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
from lcd.masks.store import MaskStore, part_paths
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


def subject_masks(image: np.ndarray) -> list[np.ndarray]:
    """The subject of a photo, as a point or box prompt on it would select: GrabCut from a box
    over the central 80% (DreamBench subjects are centred), largest component. A stand-in for the
    mask a user actually edits; real SAM edges follow the object like these do."""
    import cv2

    h, w = image.shape[:2]
    gc = np.zeros((h, w), np.uint8)
    bg, fg = np.zeros((1, 65)), np.zeros((1, 65))
    cv2.setRNGSeed(0)
    cv2.grabCut(np.ascontiguousarray(image[..., ::-1]), gc, (w // 10, h // 10, w * 8 // 10, h * 8 // 10), bg, fg, 5,
                cv2.GC_INIT_WITH_RECT)
    n, comp, stats, _ = cv2.connectedComponentsWithStats(((gc == 1) | (gc == 3)).astype(np.uint8))
    if n < 2:
        return []
    return [comp == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))]


def storage_and_decode(out: Path, image_ids: list[str], repeats: int, codec: str, level: int | None) -> dict:
    """Parquet bytes per mask vs PNG bytes per mask, and the read API's decode rate.

    `bytes_ratio_rle_vs_png` counts the RLE columns (rle.counts + rle.size) as stored: their
    compressed column-chunk bytes from the Parquet footer. `bytes_ratio_parquet_file_vs_png`
    counts whole files: every other column (ids, paths, prompts, scores, model) and footers too.
    The PNG peer is 8-bit grey written by cv2.imwrite, as SAM's scripts/amg.py writes masks.
    """
    import pyarrow.parquet as pq

    t0 = time.perf_counter()
    decoded = 0
    store = MaskStore(out)  # opened once, as a bulk reader (an edit shard) does
    for _ in range(repeats):
        for i in image_ids:
            decoded += store.masks(i)[1].shape[0]
    decode_s = time.perf_counter() - t0
    file_bytes = rle_bytes = 0
    for p in part_paths(out):
        file_bytes += p.stat().st_size
        md = pq.read_metadata(p)
        for g in range(md.num_row_groups):
            for c in range(md.num_columns):
                col = md.row_group(g).column(c)
                rle_bytes += col.total_compressed_size if col.path_in_schema.startswith("rle.") else 0
    all_masks = [m for i in image_ids for m in store.masks(i)[1]]
    n = len(all_masks)
    png_cv = sum(png_bytes(m, "cv2") for m in all_masks)
    png_l = sum(png_bytes(m, "L") for m in all_masks)
    png_1 = sum(png_bytes(m, "1") for m in all_masks)
    rle = pq.read_table(out / "masks", columns=["rle"]).column("rle").combine_chunks()
    counts_chars = sum(len(c) for c in rle.field("counts").to_pylist())
    return {
        "masks": n,
        "bytes_ratio_rle_vs_png": round(rle_bytes / png_cv, 4),
        "bytes_ratio_rle_vs_png_optimized": round(rle_bytes / png_l, 4),
        "bytes_ratio_rle_vs_png_1bit": round(rle_bytes / png_1, 4),
        "bytes_ratio_parquet_file_vs_png": round(file_bytes / png_cv, 4),
        "rle_bytes_per_mask": round(rle_bytes / n, 1),
        "rle_counts_chars_per_mask": round(counts_chars / n, 1),  # the COCO string, uncompressed
        "parquet_file_bytes_per_mask": round(file_bytes / n, 1),
        "png_bytes_per_mask": round(png_cv / n, 1),
        "png_optimized_bytes_per_mask": round(png_l / n, 1),
        "png_1bit_bytes_per_mask": round(png_1 / n, 1),
        "masks_decoded_per_s": round(decoded / decode_s, 1),
        "by_relative_size": ratio_by_size(all_masks, codec, level),
    }


SIZE_BINS = (0.0, 0.1, 0.25, 0.5, 1.01)  # sqrt(mask area / image area): the side of a mask relative to the image


def ratio_by_size(masks: list[np.ndarray], codec: str, level: int | None) -> dict:
    """RLE bytes vs cv2 PNG bytes per bin of relative mask size. The ratio depends mostly on how
    big a mask is (a PNG has a floor of ~1.1 kB at 512x512, an empty RLE is 4 bytes), so this
    lets a user predict the ratio for their own mask-size mix. Each bin's counts strings are
    compressed together with the store's codec and level (no Parquet page overhead, which would
    swamp a bin of a few masks)."""
    import pyarrow as pa

    from lcd.masks.rle import encode_rle

    bins: dict[str, list] = {}
    for m in masks:
        rel = float(np.sqrt(m.mean()))
        k = next(j for j in range(len(SIZE_BINS) - 1) if rel < SIZE_BINS[j + 1])
        bins.setdefault(f"{SIZE_BINS[k]}-{min(SIZE_BINS[k + 1], 1.0)}", []).append(m)
    result = {}
    for name, ms in sorted(bins.items()):
        data = "".join(encode_rle(m)["counts"] for m in ms).encode()
        rle = len(data) if codec == "none" else len(pa.Codec(codec, compression_level=level).compress(data, asbytes=True))
        png = sum(png_bytes(m, "cv2") for m in ms)
        result[name] = {"masks": len(ms), "bytes_ratio_rle_vs_png": round(rle / png, 4)}
    return result


def store_standin(out: Path, items: list, make_masks, kind: str, cfg: MasksConfig) -> None:
    """Store masks made by `make_masks(image)` for each item, exactly as the SAM path stores them."""
    from lcd.masks.manifest import decode_image, fetch_bytes, sha256_bytes
    from lcd.masks.predict import MaskRecord
    from lcd.masks.store import image_rows, write_part

    rows, images = [], []
    for it in items:
        data = fetch_bytes(it.image, it.image_id)
        img = decode_image(data, it.image_id)
        recs = [MaskRecord(m, "auto", 1.0, 1.0) for m in make_masks(img)]
        h, w = img.shape[:2]
        rows += image_rows(it.image_id, it.image, sha256_bytes(data), w, h, recs, {"type": kind})
        images.append({"image_id": it.image_id, "image_sha256": sha256_bytes(data), "width": w, "height": h})
    write_part(out, rows, images, {}, cfg.row_group_rows, cfg.parquet_codec, cfg.parquet_level)


def lookup_scaling(n_images: int, masks_per_image: int = 20, images_per_part: int = 64, lookups: int = 50) -> dict:
    """ms per image lookup in a store of `n_images` synthetic 256x256 images (64 per part, as
    `masks.images_per_part` defaults), through an opened MaskStore vs pandas' filtered read of
    the folder (what a user of a plain Parquet table would call)."""
    import pandas as pd

    from lcd.masks.predict import MaskRecord
    from lcd.masks.store import image_rows, write_part

    out = Path(tempfile.mkdtemp()) / "lookup-store"
    yy, xx = np.mgrid[:256, :256]
    recs = [MaskRecord(((yy - 100 - k) ** 2 + (xx - 120) ** 2) < (20 + 3 * k) ** 2, "auto", 0.9, 0.9)
            for k in range(masks_per_image)]
    model = {"type": "synthetic", "ref": "-", "sha256": "-", "revision": None}
    for p0 in range(0, n_images, images_per_part):
        ids = [f"im{i:06d}" for i in range(p0, min(p0 + images_per_part, n_images))]
        rows = [r for i in ids for r in image_rows(i, f"{i}.jpg", "ab" * 32, 256, 256, recs, model)]
        write_part(out, rows, [{"image_id": i, "image_sha256": "ab" * 32, "width": 256, "height": 256} for i in ids],
                   {}, 1024)
    pick = [f"im{i:06d}" for i in np.random.default_rng(0).choice(n_images, lookups)]
    t0 = time.perf_counter()
    store = MaskStore(out)
    open_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in pick:
        store.masks(i)
    ours = (time.perf_counter() - t0) / lookups
    t0 = time.perf_counter()
    for i in pick:
        pd.read_parquet(out / "masks", filters=[("image_id", "==", i)])
    peer = (time.perf_counter() - t0) / lookups
    return {"images": n_images, "parts": len(part_paths(out)), "store_open_ms": round(open_s * 1e3, 1),
            "ms_per_lookup_opened_store": round(ours * 1e3, 2), "ms_per_lookup_pandas_filter": round(peer * 1e3, 2),
            "speedup_vs_pandas_filter": round(peer / ours, 1), "lookup_includes_rle_decode": True}


def main() -> None:
    import sys

    if "--compare" in sys.argv[1:]:  # side by side with stock SamAutomaticMaskGenerator (bench/masks_compare.py)
        from bench.masks_compare import main as compare_main

        return compare_main(sys.argv[1:])
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
    ap.add_argument("--lookup-images", type=int, default=4000, help="size of the synthetic store for lookup timing")
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
    sam_stats = storage_and_decode(out, ids, args.decode_repeats, cfg.parquet_codec, cfg.parquet_level)

    # 3. the same store on realistic masks of the same photos (random SAM weights give texture)
    store_standin(out.parent / "photo-regions", items, photo_region_masks, "kmeans-regions", cfg)
    photo_stats = storage_and_decode(out.parent / "photo-regions", ids, args.decode_repeats, cfg.parquet_codec, cfg.parquet_level)
    store_standin(out.parent / "subjects", items, subject_masks, "grabcut-subject", cfg)
    subject_stats = storage_and_decode(out.parent / "subjects", ids, args.decode_repeats, cfg.parquet_codec, cfg.parquet_level)

    result = {
        "device": args.device, "sam_type": args.sam_type, "images": len(items),
        "image_size": list(Image.open(photos[0]).size), "points_per_side": args.points_per_side,
        **sam_stats,
        "encoder_passes_per_image": len(calls) / len(items),
        "compute_s_per_image": round(compute_s / len(items), 3),
        "failed": summary.failed,
        "photo_region_masks": photo_stats,
        "subject_masks": subject_stats,
        "lookup": lookup_scaling(args.lookup_images),
        "storage": {"codec": cfg.parquet_codec, "level": cfg.parquet_level,
                    "counts_encoding": "DELTA_LENGTH_BYTE_ARRAY"},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
