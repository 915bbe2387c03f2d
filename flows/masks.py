"""precompute-masks: SAM masks of every scene into the masks store."""

from __future__ import annotations

from prefect import flow, get_run_logger

from tasks.masks import precompute_masks_task


@flow(name="precompute-masks")
def precompute_masks(images_dir: str = "data/scenes", out_path: str = "outputs/masks",
                     params_path: str = "params.yaml") -> dict:
    """SAM masks of every scene, stored as RLE Parquet under `out_path` (lcd.masks.store layout);
    -> the run's counts."""
    s = precompute_masks_task(images_dir, out_path, params_path)
    get_run_logger().info(f"summary: {s['done']} images masked ({s['recomputed']} under changed settings), "
                          f"{s['skipped']} already stored, {s['failed']} failed, {s['masks']} masks -> {out_path}")
    return s
