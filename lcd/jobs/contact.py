"""Contact sheets: one row per item, before | mask | after, as a single uint8 image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from lcd.io.images import load_image
from lcd.jobs.editing import load_region
from lcd.jobs.manifest import ManifestItem


def _thumb(a: np.ndarray, side: int) -> np.ndarray:
    im = Image.fromarray(a)
    im.thumbnail((side, side))
    canvas = Image.new("RGB", (side, side), (32, 32, 32))
    canvas.paste(im.convert("RGB"), ((side - im.width) // 2, (side - im.height) // 2))
    return np.asarray(canvas)


def contact_sheet(triples: list[tuple[np.ndarray, np.ndarray, np.ndarray]], side: int = 96, gap: int = 4) -> np.ndarray:
    """[(before (H,W,3) uint8, mask (H,W) bool, after (H,W,3) uint8)] -> (rows*(side+gap), 3*(side+gap), 3) uint8."""
    if not triples:
        raise ValueError("contact_sheet: triples must not be empty")
    cell = side + gap
    sheet = np.full((len(triples) * cell, 3 * cell, 3), 255, np.uint8)
    for r, (before, mask, after) in enumerate(triples):
        m = np.repeat((mask.astype(np.uint8) * 255)[..., None], 3, axis=2)
        for c, a in enumerate((before, m, after)):
            sheet[r * cell : r * cell + side, c * cell : c * cell + side] = _thumb(a, side)
    return sheet


def load_triple(item: ManifestItem, output: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read one item's before, region and after from disk."""
    before = load_image(item.image)
    return before, load_region(item, before), load_image(output)
