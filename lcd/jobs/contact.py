"""Contact sheets: one row per item, before | mask | after, as a single uint8 image, each row
labelled with its id and prompt; failed items get a red row with the stage and message, so the
sheet shows what went wrong as well as what worked."""

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


LABEL_PX = 24  # two lines of Pillow's default bitmap font under each labelled row
FAILED_RGB = (200, 30, 30)


def contact_sheet(triples: list[tuple[np.ndarray, np.ndarray, np.ndarray]], side: int = 96, gap: int = 4,
                  labels: list[str] | None = None, failed: list[bool] | None = None) -> np.ndarray:
    """[(before (H,W,3) uint8, mask (H,W) bool, after (H,W,3) uint8)] -> (rows*(side+label+gap),
    3*(side+gap), 3) uint8; label = LABEL_PX when `labels` (one text per row) are given, else 0.
    Rows flagged in `failed` get a red frame and red text."""
    if not triples:
        raise ValueError("contact_sheet: triples must not be empty")
    if labels is not None and len(labels) != len(triples):
        raise ValueError(f"contact_sheet: {len(labels)} labels for {len(triples)} rows")
    failed = failed or [False] * len(triples)
    cell, row_h = side + gap, side + gap + (LABEL_PX if labels is not None else 0)
    sheet = np.full((len(triples) * row_h, 3 * cell, 3), 255, np.uint8)
    for r, (before, mask, after) in enumerate(triples):
        m = np.repeat((mask.astype(np.uint8) * 255)[..., None], 3, axis=2)
        if failed[r]:
            sheet[r * row_h : r * row_h + side + gap // 2] = FAILED_RGB
        for c, a in enumerate((before, m, after)):
            sheet[r * row_h : r * row_h + side, c * cell : c * cell + side] = _thumb(a, side)
    return _draw_labels(sheet, labels, failed, row_h, side) if labels is not None else sheet


def _draw_labels(sheet: np.ndarray, labels: list[str], failed: list[bool], row_h: int, side: int) -> np.ndarray:
    """Each row's label in the band under its thumbnails, wrapped to two lines that fit the width."""
    from PIL import ImageDraw, ImageFont

    im = Image.fromarray(sheet)
    draw, font = ImageDraw.Draw(im), ImageFont.load_default()
    per_line = max(8, sheet.shape[1] // 6)  # the default font is ~6 px per character
    for r, text in enumerate(labels):
        text = " ".join(text.split())
        lines = [text[:per_line], text[per_line : 2 * per_line]]
        if len(text) > 2 * per_line:
            lines[1] = lines[1][:-1] + "…"
        for k, line in enumerate(l for l in lines if l):
            draw.text((2, r * row_h + side + 1 + 11 * k), line, fill=FAILED_RGB if failed[r] else (0, 0, 0), font=font)
    return np.asarray(im)


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


BLANK = np.full((8, 8, 3), 96, np.uint8)


def result_triples(items: dict[str, ManifestItem], results: list[dict], out_root: str | Path,
                   masks_store: str | Path | None = None) -> tuple[list, list[str]]:
    """Contact-sheet triples for result rows (id, output) -> (triples, problems). An item whose
    files cannot be read any more gets a blank grey row and a message naming it: the sheet is a
    report on the batch and must not fail it."""
    triples, problems = [], []
    for r in results:
        try:
            triples.append(load_triple(items[r["id"]], r["output"], region_path(out_root, r["id"]), masks_store))
        except (LcdError, OSError, KeyError) as e:
            problems.append(f"{r['id']}: contact sheet row left blank: {type(e).__name__}: {e}")
            triples.append((BLANK, np.zeros((8, 8), bool), BLANK))
    return triples, problems


def failure_triples(items: dict[str, ManifestItem], failures: list[dict]) -> list:
    """Rows for failure rows (id, ...): the item's input image when it can still be read (a
    manifest failure has no item, a missing file no image), blank mask and output."""
    triples = []
    for f in failures:
        try:
            before = load_image(items[f["id"]].image)
        except (LcdError, OSError, KeyError):
            before = BLANK
        triples.append((before, np.zeros((8, 8), bool), BLANK))
    return triples


def sheet_labels(results: list[dict], failures: list[dict]) -> tuple[list[str], list[bool]]:
    """Labels for result rows ('id: prompt') then failure rows ('FAILED id [stage]: message'),
    and which rows failed."""
    labels = [f"{r['id']}: {r.get('prompt') or ''}" for r in results]
    labels += [f"FAILED {f['id']} [{f.get('stage', '?')}]: {f.get('message', '')}" for f in failures]
    return labels, [False] * len(results) + [True] * len(failures)
