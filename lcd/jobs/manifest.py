"""Edit manifests: one JSON object per item -> validated `ManifestItem`s, split into shards.

A manifest is JSON Lines (`.jsonl`, one object a line), a JSON list (`.json`) or Parquet
(`.parquet`, one column per field). Each item has
an image, a region (a `mask` file or a `select` rule), an optional `concept`, a `prompt` and a
`seed`. Relative paths are resolved against the manifest's own folder, so a manifest travels
with its data (DVC-tracked `data/`). A malformed line does not sink the batch: it comes back as
a failure row naming the line, and the other items run.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Iterator

from pydantic import Field, ValidationError, model_validator

from lcd.config_base import StrictConfig
from lcd.io import storage
from lcd.errors import LcdError
from lcd.io.documents import json_value, kind, one_line

ITEM_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # matched whole (fullmatch): no trailing newline


class ManifestItem(StrictConfig):
    """One edit request. `id` names the output file (`<out>/edits/<id>.png`) and every table row."""

    id: str
    image: str
    mask: str | None = None
    select: str | None = None  # "box:x0,y0,x1,y1" (pixels, end-exclusive), or a rule lcd.masks resolves
    concept: str | None = None  # a concept name under the concepts root, or a folder path
    prompt: str = Field(min_length=1)
    seed: int = Field(0, ge=-(2**63), le=2**63 - 1)  # what the int64 results column and torch's generator take

    @model_validator(mode="after")
    def _one_region(self) -> "ManifestItem":
        if (self.mask is None) == (self.select is None):
            raise ValueError("give exactly one of 'mask' (a mask file) or 'select' (a selection rule)")
        if not ITEM_ID.fullmatch(self.id):
            raise ValueError(f"id must match {ITEM_ID.pattern} whole (it names the output file), got {self.id!r}")
        for name in ("image", "mask", "concept"):  # the OS refuses such a path with a ValueError, not an OSError
            if "\x00" in (getattr(self, name) or ""):
                raise ValueError(f"{name} path contains a NUL byte: {getattr(self, name)!r}")
        for name in ("image", "mask", "select", "concept", "prompt"):
            # a lone surrogate ("s\udcff.png" in JSON) is no UTF-8 text: the plan, every table and
            # the PNG metadata could not hold it (pyarrow raised out of write_plan, sinking the job)
            v = getattr(self, name) or ""
            if not v.isascii():
                try:
                    v.encode("utf-8")
                except UnicodeEncodeError as e:
                    raise ValueError(f"{name} is not UTF-8 text (a lone surrogate {v[e.start]!r} at "
                                     f"position {e.start}): {v[:80]!r}") from None
        return self


@dataclass(frozen=True)
class ManifestFailure:
    """A manifest entry that could not become an item (bad JSON, missing key, duplicate id)."""

    id: str
    message: str


def _default_id(raw: dict, index: int) -> str:
    stem = Path(str(raw.get("image", "item"))).stem
    return re.sub(r"[^A-Za-z0-9._-]", "_", f"{index:06d}-{stem}")[:128]


Entry = tuple[int, "dict | None", "str | None"]  # (index, parsed object or None, parse error or None)


MAX_JSON_MANIFEST_BYTES = 256 << 20  # a .json list is parsed whole; larger jobs are JSON Lines or Parquet
MAX_LINE_BYTES = 1 << 20  # one JSON Lines entry; a line longer than this is that entry's failure


def text_entries(text: str | bytes, fmt: str = "jsonl", name: str = "manifest") -> Iterator[Entry]:
    """Manifest text -> (index, object, error) per entry, in order; blank JSONL lines are skipped.
    A `.json` manifest that does not parse (too deep, not UTF-8, a repeated key) is an LcdError
    naming `name`; a bad JSON Lines line is that entry's error."""
    if fmt not in ("jsonl", "json"):
        raise LcdError(f"manifest format must be 'jsonl' or 'json', got {fmt!r}", item="manifest")
    if fmt == "json":
        entries, why = json_value(text)
        if why is not None:
            raise LcdError(f"{name}: manifest is {why}", item=name)
        if not isinstance(entries, list):
            raise LcdError(f"{name}: a .json manifest must be a list of objects, got {kind(entries)}", item=name)
        yield from ((i, e, None) for i, e in enumerate(entries))
        return
    for i, line in enumerate(l for l in text.splitlines() if l.strip()):
        yield _json_line(i, line)


def _json_line(i: int, line: str | bytes) -> Entry:
    obj, why = json_value(line)
    if why is not None:
        return i, None, f"line {i + 1}: {why.replace('(line 1, column', '(column')}"
    return i, obj, None


def validate_entries(entries: Iterable[Entry], seen: set[str] | None = None) -> Iterator[ManifestItem | ManifestFailure]:
    """Entries -> a ManifestItem or a ManifestFailure each, in order. Ids default to
    `<entry index>-<image stem>`; an id already in `seen` (updated as it goes) is a failure."""
    seen = set() if seen is None else seen
    for i, raw, err in entries:
        if err is None and not isinstance(raw, dict):
            err = f"entry {i}: must be a JSON object, got {type(raw).__name__}"
        fallback = f"{i:06d}-invalid"
        if err is not None:
            yield ManifestFailure(fallback, err)
            continue
        kept = {k: v for k, v in raw.items() if v is not None or k == "id"}
        raw = kept if "id" in kept else {"id": _default_id(raw, i), **kept}  # the default only when needed
        try:
            item = ManifestItem.model_validate(raw)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(x) for x in first["loc"]) or "item"
            got = "" if first["type"] == "missing" or not first["loc"] else f" (got {one_line(repr(first.get('input')), 60)})"
            fid = str(raw.get("id", fallback))
            fid = fid if len(fid) <= 128 and fid.isprintable() else fallback  # it names a table row
            yield ManifestFailure(fid, f"entry {i}: {where}: {one_line(first['msg'], 200)}{got}")
            continue
        if item.id in seen:
            yield ManifestFailure(item.id, f"entry {i}: duplicate id {item.id!r} (ids name output files)")
            continue
        seen.add(item.id)
        yield item


def parse_manifest(text: str, fmt: str = "jsonl") -> tuple[list[ManifestItem], list[ManifestFailure]]:
    """Parse manifest text -> (items in order, failures). Ids default to `<line index>-<image stem>`."""
    items: list[ManifestItem] = []
    failures: list[ManifestFailure] = []
    for x in validate_entries(text_entries(text, fmt)):
        (items if isinstance(x, ManifestItem) else failures).append(x)
    return items, failures


def manifest_format(path: str | Path) -> str:
    """'jsonl', 'json' or 'parquet', from the file's suffix (anything else reads as JSON Lines)."""
    suffix = Path(path).suffix.lower()
    return {".json": "json", ".parquet": "parquet"}.get(suffix, "jsonl")


def file_entries(path: str | Path, batch_rows: int = 65536) -> Iterator[Entry]:
    """Stream a manifest file's entries without holding it: JSON Lines line by line (as bytes, so
    one bad byte is one bad line), Parquet in record batches (columns = item fields; nulls are
    absent fields), a `.json` list whole. `path` may be a local file or a URL (lcd.io.storage)."""
    p = storage.normalize(path)
    if not storage.is_file(p):
        raise LcdError(f"{p}: manifest not found", item=str(p))
    fmt = manifest_format(str(p))
    if fmt == "json":
        if isinstance(p, Path) and p.stat().st_size > MAX_JSON_MANIFEST_BYTES:
            raise LcdError(f"{p}: a .json manifest of {p.stat().st_size:,} bytes is over the limit of "
                           f"{MAX_JSON_MANIFEST_BYTES:,}; write it as JSON Lines (.jsonl) or Parquet", item=str(p))
        yield from text_entries(storage.read_bytes(p), "json", str(p))
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        with storage.open_read(p) as f:
            try:
                pf = pq.ParquetFile(f)
            except Exception as e:  # noqa: BLE001 - not Parquet at all: one line naming the file
                raise LcdError(f"{p}: cannot read the Parquet manifest: {one_line(str(e), 300)}", item=str(p)) from None
            i = 0
            try:
                for batch in pf.iter_batches(batch_size=batch_rows):
                    for row in batch.to_pylist():
                        yield i, row, None
                        i += 1
            except Exception as e:  # noqa: BLE001 - a torn or corrupt row group: the rows before it stand
                raise LcdError(f"{p}: cannot read the Parquet manifest after row {i}: {one_line(str(e), 300)}",
                               item=str(p)) from None
    else:
        yield from _jsonl_entries(p)


class _Lines:
    """`readline(limit)` over any binary file object: s3fs/fsspec files take no size argument
    (`AbstractBufferedFile.readline()`), so lines are cut from 1 MiB reads here. At most one read
    beyond `limit` is held."""

    def __init__(self, f, chunk: int = 1 << 20):
        self._f, self._chunk, self._buf, self._pos = f, chunk, b"", 0

    def readline(self, limit: int) -> bytes:
        while True:
            nl = self._buf.find(b"\n", self._pos, self._pos + limit)
            if nl >= 0 or len(self._buf) - self._pos >= limit:
                end = nl + 1 if nl >= 0 else self._pos + limit
                break
            more = self._f.read(self._chunk)
            if not more:
                end = len(self._buf)
                break
            self._buf, self._pos = self._buf[self._pos:] + more, 0
        line, self._pos = self._buf[self._pos:end], end
        return line


def _jsonl_entries(p) -> Iterator[Entry]:
    """JSON Lines entries, a line at a time and at most MAX_LINE_BYTES held: a 10 GB file without a
    newline is one failed entry, not a MemoryError. A file that is UTF-16 or binary from its first
    line (a Parquet or image file named .jsonl) is refused whole, naming it."""
    with storage.open_read(p) as raw:
        f, i = _Lines(raw), 0
        while line := f.readline(MAX_LINE_BYTES + 1):
            if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
                while (rest := f.readline(MAX_LINE_BYTES)) and not rest.endswith(b"\n"):
                    pass  # skip the rest of the long line
                yield i, None, f"line {i + 1}: longer than {MAX_LINE_BYTES:,} bytes"
                i += 1
                continue
            if i == 0 and line.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
                raise LcdError(f"{p}: manifest is UTF-16 (byte-order mark); JSON Lines must be UTF-8: "
                               "save it as UTF-8", item=str(p))
            if i == 0 and b"\x00" in line:
                raise LcdError(f"{p}: manifest is a binary file (NUL byte in its first line), not JSON Lines",
                               item=str(p))
            if line.strip():
                yield _json_line(i, line)
                i += 1


def check_manifest_file(path: str | Path) -> None:
    """The file-level checks of `file_entries` up to its first entry (found, a `.json` list that
    parses, a Parquet footer that reads, JSON Lines that are not UTF-16 or binary): for an entry
    point to refuse a broken manifest in one line before it starts a run."""
    for _ in file_entries(path, batch_rows=1):
        break


def read_manifest(path: str | Path) -> tuple[list[ManifestItem], list[ManifestFailure]]:
    """Read a `.jsonl` / `.json` / `.parquet` manifest file; relative paths in it are made absolute."""
    base = storage.parent(path)
    items: list[ManifestItem] = []
    failures: list[ManifestFailure] = []
    for x in validate_entries(file_entries(path)):
        if isinstance(x, ManifestItem):
            items.append(resolve_paths(x, base))
        else:
            failures.append(x)
    return items, failures


def resolve_paths(item: ManifestItem, base: str | Path) -> ManifestItem:
    """Image / mask paths relative to `base` (a folder or a URL prefix: the manifest's own) ->
    absolute; absolute paths and URLs are kept. Concept names are left as given."""
    b = str(base)
    return item.model_copy(update={"image": _resolved(item.image, b) if item.image is not None else None,
                                   "mask": _resolved(item.mask, b) if item.mask is not None else None})


@lru_cache(maxsize=1 << 16)
def _resolved(s: str, base: str) -> str:
    """`s` made absolute against `base`; memoised because planning resolves every item's image
    and mask (two pathlib joins, most of a plan's time) and items share scenes and masks."""
    if storage.is_remote(s) or Path(s).is_absolute():
        return s
    return str(storage.join(base, s))


def shard_items(items: list[ManifestItem], num_shards: int, index: int) -> list[ManifestItem]:
    """Contiguous shard `index` of `num_shards` (sizes differ by at most one). Deterministic in the
    manifest order, so a re-run assigns every item to the same shard and finds its output."""
    if num_shards < 1:
        raise LcdError(f"num_shards must be >= 1, got {num_shards}", item="num_shards")
    if not 0 <= index < num_shards:
        raise LcdError(f"shard index must be in [0, {num_shards}), got {index}", item="shard_index")
    n = len(items)
    start, stop = index * n // num_shards, (index + 1) * n // num_shards
    return items[start:stop]
