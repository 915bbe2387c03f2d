"""Contact sheets: one row per item, before | mask | after, as a single uint8 image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from lcd.errors import LcdError
from lcd.io import storage
from lcd.io.images import load_image, load_mask
from lcd.jobs.layout import region_path
from lcd.jobs.manifest import ManifestItem
from lcd.jobs.regions import load_region


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


def load_triple(item: ManifestItem, output: str | Path, region_file: str | Path | None = None,
                masks_store: str | Path | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read one item's before, region and after from disk. The region is the one the edit saved
    (`region_file`) when present, else resolved again from the item (mask file, box, masks store)."""
    before = load_image(item.image)
    if region_file is not None and storage.exists(region_file):
        region = load_mask(region_file)
    else:
        region = load_region(item, before, masks_store)
    return before, region, load_image(output)


def result_triples(items: dict[str, ManifestItem], results: list[dict], out_root: str | Path,
                   masks_store: str | Path | None = None) -> tuple[list, list[str]]:
    """Contact-sheet triples for result rows (id, output) -> (triples, problems). An item whose
    files cannot be read any more gets a blank grey row and a message naming it: the sheet is a
    report on the batch and must not fail it."""
    triples, problems = [], []
    blank = np.full((8, 8, 3), 96, np.uint8)
    for r in results:
        try:
            triples.append(load_triple(items[r["id"]], r["output"], region_path(out_root, r["id"]), masks_store))
        except (LcdError, OSError, KeyError) as e:
            problems.append(f"{r['id']}: contact sheet row left blank: {type(e).__name__}: {e}")
            triples.append((blank, np.zeros((8, 8), bool), blank))
    return triples, problems
