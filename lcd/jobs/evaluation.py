"""The edit results table -> the table lcd.evaluate scores.

lcd.evaluate compares each edit with its concept's photos (CLIP-I / DINO-I), so its `concept`
column is a photo folder; the edit stage records the concept's name (or folder). This maps names
to `<photos_root>/<name>` and keeps the rows that can be scored: edited or skipped rows of items
that used a concept and whose region is on disk -- the region the edit saved beside its output
(`<out>/regions/<id>.png`, so `sam:` and `box:` regions are scored too), else a mask file.
"""

from __future__ import annotations

from pathlib import Path

from lcd.errors import LcdError
from lcd.jobs import tables
from lcd.jobs.layout import region_path


def evaluation_table(results_path: str | Path, photos_root: str | Path, dest: str | Path) -> int:
    """Write the scorable rows of `results_path` to `dest` (same schema); -> how many."""
    rows = tables.read_table(results_path, tables.RESULTS_SCHEMA).to_pylist()
    keep = []
    for r in rows:
        if r["concept"] is None or r["status"] not in ("edited", "skipped"):
            continue
        saved = region_path(Path(results_path).parent, r["id"])
        region = saved if saved.is_file() else Path(r["region"])
        if not region.is_file():
            continue
        name = r["concept"]
        photos = Path(name) if "/" in name else Path(photos_root) / name
        keep.append(r | {"concept": str(photos), "region": str(region)})
    if not keep:
        raise LcdError(f"{results_path}: no edit to evaluate (none used a concept with a region on disk)",
                       item=str(results_path))
    tables.write_table(dest, keep, tables.RESULTS_SCHEMA)
    return len(keep)
