"""Where edit-batch puts things under `out_root` (a folder or a remote URL, lcd.io.storage), and
whether an output is current.

    <out_root>/edits/<id>.png     the edit (`.webp` with edit.output_format: webp); its metadata
                                  carries the item's input_hash
    <out_root>/regions/<id>.png   the region that edit used (8-bit, 255 = edited), as resolved then
    <out_root>/tables/            per-shard results/failures tables (lcd.jobs.tables)
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from lcd.io import storage

from lcd.io.encode import SUFFIX, OutputFormat
from lcd.io.images import read_png_meta

EDITS_DIR = "edits"
REGIONS_DIR = "regions"


def output_name(item_id: str, fmt: OutputFormat = "png") -> str:
    """The edit's file name in edits/: the id and the output format's suffix."""
    return item_id + SUFFIX[fmt]


def output_path(out_root: str | Path, item_id: str, fmt: OutputFormat = "png") -> str | Path:
    return storage.join(out_root, EDITS_DIR, output_name(item_id, fmt))


def region_path(out_root: str | Path, item_id: str) -> str | Path:
    """Where the resolved region of an item is kept: a `sam:text:` pick or a `box:` is visible and
    auditable later without the masks store or CLIP."""
    return storage.join(out_root, REGIONS_DIR, f"{item_id}.png")


def is_current(path: str | Path, input_hash: str) -> bool:
    """True when `path` exists and was made from exactly these inputs."""
    if not storage.exists(path):
        return False
    try:
        return read_png_meta(path).get("input_hash") == input_hash
    except Exception:  # unreadable / foreign file: redo it
        return False


def output_listing(out_root: str | Path) -> set[str]:
    """File names in `<out_root>/edits/`, from one directory listing (no file is opened): the
    coordinator's one look at the whole job."""
    return storage.list_names(storage.join(out_root, EDITS_DIR))


def present_outputs(out_root: str | Path, names: Iterable[str]) -> set[str]:
    """Which of these output names are in `<out_root>/edits/`: a shard's look at its own items
    (lcd.io.storage.present_names), so its cost does not grow with the job."""
    return storage.present_names(storage.join(out_root, EDITS_DIR), names)
