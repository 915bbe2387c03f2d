"""Where edit-batch puts things under `out_root` (a folder or a remote URL, lcd.io.storage), and
whether an output is current.

    <out_root>/edits/<id>.png     the edit (`.webp` with edit.output_format: webp); its metadata
                                  carries the item's input_hash; current only while it is a
                                  regular, non-empty, whole file with the item's hash (is_current)
    <out_root>/regions/<id>.png   the region that edit used (8-bit, 255 = edited), as resolved then
    <out_root>/tables/            per-shard results/failures tables (lcd.jobs.tables)
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Iterable

from PIL import Image

from lcd.io import storage
from lcd.io.encode import PNG_SIGNATURE, SUFFIX, OutputFormat, format_of, read_lcd_text

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


PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the IEND chunk, always the last 12 bytes of a whole PNG


def usable(entry: storage.Entry | None) -> bool:
    """An output can be current only as a regular file (no symlink, dangling or not) of non-zero size."""
    return entry is not None and entry.regular and entry.size > 0


def is_current(path: str | Path, input_hash: str, size: int | None = None) -> bool:
    """True when `path` is a whole image of its suffix's format that was made from exactly these
    inputs: the signature and first chunk read, the file ends where its format says (a PNG in
    IEND, a WebP at the RIFF size: a truncated file is not whole) and its metadata's input_hash
    matches. Reads the first bytes, the last 12 and the metadata chunks; never decodes pixels."""
    if size is None:
        entry = storage.stat_entry(path)
        if not usable(entry):
            return False
        size = entry.size
    try:
        with storage.open_read(path) as f:
            head = f.read(64)
            f.seek(max(0, size - len(PNG_END)))
            tail = f.read(len(PNG_END))
            if not _whole(format_of(path), head, tail, size):
                return False
            f.seek(0)
            with Image.open(f) as im:
                raw = read_lcd_text(im)
        return bool(raw) and json.loads(raw).get("input_hash") == input_hash
    except Exception:  # noqa: BLE001 - unreadable / foreign / cut file: redo it
        return False


def _whole(fmt: OutputFormat | None, head: bytes, tail: bytes, size: int) -> bool:
    """Whether a file of `size` bytes starting with `head` and ending with `tail` is whole."""
    if fmt == "png":
        if head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR" or struct.unpack(">I", head[8:12])[0] != 13:
            return False
        w, h = struct.unpack(">II", head[16:24])
        return w > 0 and h > 0 and zlib.crc32(head[12:29]) == struct.unpack(">I", head[29:33])[0] and tail == PNG_END
    if fmt == "webp":
        riff = struct.unpack("<I", head[4:8])[0] if len(head) >= 16 else -1
        return head[:4] == b"RIFF" and head[8:12] == b"WEBP" and head[12:16] in (b"VP8 ", b"VP8L", b"VP8X") \
            and riff + 8 + (riff & 1) == size
    return False


def output_stats(out_root: str | Path, names: Iterable[str]) -> dict[str, storage.Entry]:
    """{name: Entry} of these output names found in `<out_root>/edits/`: a shard's look at its
    own items (an lstat each locally, a listing under their prefixes on object storage:
    lcd.io.storage.entries), so its cost does not grow with the job and no output is opened."""
    return storage.entries(storage.join(out_root, EDITS_DIR), names)


def output_listing(out_root: str | Path) -> dict[str, storage.Entry] | None:
    """The coordinator's one look at the whole job: on object storage every Entry of
    `<out_root>/edits/` from one listing (sizes and ETags come with it); None for a local
    out_root, whose shards' own lstat calls (output_stats) cost no more than a listing's entries."""
    if not storage.is_remote(out_root):
        return None
    return storage.entries(storage.join(out_root, EDITS_DIR))


def present_outputs(out_root: str | Path, names: Iterable[str]) -> set[str]:
    """Which of these output names are in `<out_root>/edits/` (any entry, even a dangling link)."""
    return storage.present_names(storage.join(out_root, EDITS_DIR), names)
