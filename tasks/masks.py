"""Masks stage task: SAM masks of the scenes into the lcd.masks store (lcd.jobs.masking)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from lcd.config import load_params
from lcd.io.images import image_files
from lcd.jobs.masking import mask_scenes


@task(cache_policy=NO_CACHE)
def precompute_masks_task(images_dir: str, out_path: str, params_path: str) -> dict:
    """-> {out, done, recomputed, skipped, failed, masks} of this run."""
    params = load_params(params_path)
    s = mask_scenes(image_files(images_dir), out_path, params.masks, params.models, params.io)  # out_path: a folder or URL
    return {"out": out_path, "done": s.done, "recomputed": s.recomputed, "skipped": s.skipped,
            "failed": s.failed, "masks": s.masks}
