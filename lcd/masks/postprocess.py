"""Selected mask -> edit region: fill holes, dilate, feather; PNG export.

Pure numpy/cv2 except `save_mask_png`. Masks are (H, W) bool, alphas (H, W) float32 in [0, 1].
Which dilation applies where is said once, in lcd.edit.region.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from lcd.masks.morphology import dilate, feather_alpha, fill_holes
from lcd.io.atomic import atomic_path


def postprocess_mask(mask: np.ndarray, *, fill: bool, dilate_px: int) -> np.ndarray:
    """Bool mask -> bool mask with holes filled and grown by `dilate_px` (for `lcd edit`)."""
    m = fill_holes(mask) if fill else np.asarray(mask, dtype=bool).copy()
    return dilate(m, dilate_px)


def mask_alpha(mask: np.ndarray, *, fill: bool, dilate_px: int, feather_px: int) -> np.ndarray:
    """Bool mask -> float32 alpha: 1 inside the (filled, dilated) mask, linear ramp outside."""
    m = fill_holes(mask) if fill else np.asarray(mask, dtype=bool)
    return feather_alpha(m, dilate_px, feather_px)


def save_mask_png(path: str | Path, alpha: np.ndarray) -> Path:
    """Write a bool mask or [0, 1] alpha as an 8-bit grey PNG (255 = edit), atomically."""
    a = np.asarray(alpha)
    a8 = (a.astype(np.uint8) * 255) if a.dtype == bool else np.clip(np.round(a * 255.0), 0, 255).astype(np.uint8)
    with atomic_path(path) as tmp:
        Image.fromarray(a8, mode="L").save(tmp, format="PNG")
    return Path(path)
