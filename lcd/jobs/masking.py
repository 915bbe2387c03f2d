"""The masks stage: SAM's automatic masks for every scene, stored by lcd.masks as RLE Parquet.

Wraps lcd.masks.bulk.compute_masks: one item per scene file (image_id = file stem), the SAM of
`models`, the store under `out_dir` (`masks/part-*.parquet`, `failures.parquet`); a re-run skips
the scenes already stored (lcd.masks keys them by image_id + SHA-256).

`out_dir` may be a URL (`s3://bucket/run/masks`): the parts are written into a local staging
folder (in the fetch cache folder, one per store URL, so a killed run's finished parts are
uploaded by the next run on this machine) and each finished part is uploaded in one PUT, under
a sequence number after the store's newest part (readers take the newest part of an image), then
removed locally. What the store already holds is read off its parts' footers (lcd.masks.remote,
through the staging folder's UPSTREAM_FILE), never downloaded; its failures table is brought
down, updated and put back.
"""

from __future__ import annotations

import hashlib
import secrets
from pathlib import Path
from typing import Sequence

from lcd.config import ModelsConfig
from lcd.io import storage
from lcd.io.cache import cache_root, locked
from lcd.io.config import IoConfig
from lcd.masks.bulk import MasksSummary, compute_masks
from lcd.masks.config import MasksConfig
from lcd.masks.manifest import ManifestItem
from lcd.masks.store import FAILURES_FILE, MASKS_DIR, UPSTREAM_FILE, is_part_name, part_order, part_paths


def precompute_masks(images: Sequence[str | Path], out_dir: str | Path, cfg: MasksConfig, models: ModelsConfig,
                     io_cfg: IoConfig | None = None) -> str | Path:
    """Automatic SAM masks of `images` into the store at `out_dir`; -> out_dir."""
    mask_scenes(images, out_dir, cfg, models, io_cfg)
    return storage.normalize(out_dir)


def mask_scenes(images: Sequence[str | Path], out_dir: str | Path, cfg: MasksConfig, models: ModelsConfig,
                io_cfg: IoConfig | None = None) -> MasksSummary:
    """As precompute_masks; -> the run's counts (computed, recomputed, skipped, failed, masks)."""
    from lcd.models.loader import load_sam

    sam, source = load_sam(models.sam, models.sam_type, device=models.device)
    model_row = {"type": models.sam_type, "ref": source.ref, "sha256": source.sha256, "revision": source.revision}
    items = [ManifestItem(image_id=Path(str(p)).stem, image=str(p)) for p in images]
    return store_masks(items, sam, model_row, cfg, out_dir, io_cfg=io_cfg)


def store_masks(items: Sequence[ManifestItem], sam, model_row: dict, cfg: MasksConfig, out_dir: str | Path, *,
                clip=None, io_cfg: IoConfig | None = None) -> MasksSummary:
    """compute_masks into the store at `out_dir`, a local folder or a URL (the module docstring:
    staged here, each part uploaded whole). What `lcd masks compute` and the masks stage call."""
    if not storage.is_remote(out_dir):
        return compute_masks(items, sam, model_row, cfg, out_dir, clip=clip, io_cfg=io_cfg)
    url = str(storage.normalize(out_dir))
    staging = cache_root(io_cfg) / "staging" / f"masks-{hashlib.sha256(url.encode()).hexdigest()[:24]}"
    with locked(staging.with_suffix(".lock"), url, io_cfg or IoConfig()):
        staging.mkdir(parents=True, exist_ok=True)
        upload_parts(staging, url)  # 1. what a killed run here left finished
        _fetch_failures(url, staging)  # 2. the store's failures table, for compute_masks to update
        (staging / UPSTREAM_FILE).write_text(url)  # done_images(staging) reads the store's footers too
        summary = compute_masks(items, sam, model_row, cfg, staging, clip=clip, io_cfg=io_cfg)
        summary.parts = upload_parts(staging, url)  # 3. every part written, each in one PUT
    return summary


def _fetch_failures(url: str, staging: Path) -> None:
    src = storage.join(url, FAILURES_FILE)
    if storage.exists(src):
        (staging / FAILURES_FILE).write_bytes(storage.read_bytes(src))


def upload_parts(staging: Path, url: str) -> list[str]:
    """Upload the parts of the local store `staging`, oldest first, as `<url>/masks/part-<seq>-<random>
    .parquet` with seq after the store's newest part (one PUT each: a reader sees a whole part or
    none), removing each local part once uploaded; then its failures table. -> the part URLs."""
    parts = part_paths(staging)
    failures = staging / FAILURES_FILE
    if not parts and not failures.exists():
        return []
    folder = storage.join(url, MASKS_DIR)
    names = [n for n in storage.list_names(folder) if is_part_name(n)]
    seq = max((part_order(n)[0] for n in names), default=-1) + 1
    out = []
    for p in parts:
        dest = str(storage.join(folder, f"part-{seq:05d}-{secrets.token_hex(4)}.parquet"))
        storage.upload(p, dest)
        p.unlink()
        out.append(dest)
        seq += 1
    if failures.exists():
        storage.upload(failures, str(storage.join(url, FAILURES_FILE)))
        failures.unlink()
    return out
