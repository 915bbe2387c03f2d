"""precompute-masks: SAM masks of every scene into the masks store."""

from __future__ import annotations

from prefect import flow

from tasks.masks import precompute_masks_task


@flow(name="precompute-masks")
def precompute_masks(images_dir: str = "data/scenes", out_path: str = "outputs/masks",
                     params_path: str = "params.yaml") -> str:
    """SAM masks of every scene, stored as RLE Parquet under `out_path` (lcd.masks.store layout)."""
    return precompute_masks_task(images_dir, out_path, params_path)
