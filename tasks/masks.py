"""Masks stage task: SAM masks of the scenes into the lcd.masks store (lcd.jobs.masking)."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from lcd.config import load_params
from lcd.io.images import image_files
from lcd.jobs.masking import precompute_masks


@task(cache_policy=NO_CACHE)
def precompute_masks_task(images_dir: str, out_path: str, params_path: str) -> str:
    params = load_params(params_path)
    return str(precompute_masks(image_files(images_dir), Path(out_path), params.masks, params.models))
