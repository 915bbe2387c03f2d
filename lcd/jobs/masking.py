"""The masks stage: SAM's automatic masks for every scene, stored by lcd.masks as RLE Parquet.

Wraps lcd.masks.bulk.compute_masks: one item per scene file (image_id = file stem), the SAM of
`models`, the store under `out_dir` (`masks/part-*.parquet`, `failures.parquet`); a re-run skips
the scenes already stored (lcd.masks keys them by image_id + SHA-256).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from lcd.config import ModelsConfig
from lcd.masks.bulk import MasksSummary, compute_masks
from lcd.masks.config import MasksConfig
from lcd.masks.manifest import ManifestItem


def precompute_masks(images: Sequence[str | Path], out_dir: str | Path, cfg: MasksConfig, models: ModelsConfig) -> Path:
    """Automatic SAM masks of `images` into the store at `out_dir`; -> out_dir."""
    mask_scenes(images, out_dir, cfg, models)
    return Path(out_dir)


def mask_scenes(images: Sequence[str | Path], out_dir: str | Path, cfg: MasksConfig, models: ModelsConfig) -> MasksSummary:
    """As precompute_masks; -> the run's counts (computed, recomputed, skipped, failed, masks)."""
    from lcd.models.loader import load_sam

    sam, source = load_sam(models.sam, models.sam_type, device=models.device)
    model_row = {"type": models.sam_type, "ref": source.ref, "sha256": source.sha256, "revision": source.revision}
    items = [ManifestItem(image_id=Path(p).stem, image=str(p)) for p in images]
    return compute_masks(items, sam, model_row, cfg, out_dir)
