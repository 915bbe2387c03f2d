"""A masks store on object storage (`s3://bucket/run/masks` or its parent): its Parquet parts read
in place by footer and row group, never downloaded whole.

Why: workers that share only a bucket look up a few images' masks per shard in a store that may
hold millions of rows. Per part, a lookup needs its footer (the `lcd.masks.images` listing says
whether the part holds the image; the row groups' image_id statistics say where) and then only
the row groups holding that image (a ranged GET over their column chunks, coalesced by pyarrow's
pre-buffering). The footers are kept per machine in the fetch cache folder (lcd.io.cache's
root, `masks-footers/`), keyed by the part's URL, ETag and size: a part written again (a new
ETag) has its footer read again; an unchanged one costs nothing beyond the one listing of the
folder that opening a store makes.

The writer side (lcd.jobs.masking) writes parts locally and uploads each whole part in one PUT,
so a reader never sees a partial part.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lcd.errors import LcdError
from lcd.io import storage
from lcd.io.cache import cache_root
from lcd.io.config import IoConfig

FOOTERS_DIR = "masks-footers"


def is_url(path: object) -> bool:
    return storage.is_remote(str(path))


def part_entries(url: str, masks_dir: str, part_glob_ok) -> dict[str, storage.Entry]:
    """{part URL: Entry (size, ETag)} of a store URL: one part object, the `masks/` folder under
    it, or a folder of parts; one listing. LcdError naming the URL when there are none.
    `part_glob_ok(name)`: True for a part's file name (store.py's rule)."""
    url = str(storage.normalize(url))
    if url.endswith(".parquet"):
        e = storage.stat_entry(url)
        if e is None:
            raise LcdError(f"{url}: masks table not found", item=url)
        return {url: e}
    for folder in (storage.join(url, masks_dir), url):
        found = {str(storage.join(folder, n)): e for n, e in storage.entries(folder).items() if part_glob_ok(n)}
        if found:
            return found
    if not storage.entries(url):
        raise LcdError(f"{url}: masks table not found", item=url)
    raise LcdError(f"{url}: no mask parts (part-*.parquet) in folder", item=url)


def _footer_path(url: str, entry: storage.Entry, limits: IoConfig | None) -> Path:
    key = hashlib.sha256(json.dumps([url, entry.stamp, entry.size]).encode()).hexdigest()
    return cache_root(limits) / FOOTERS_DIR / key[:2] / f"{key}.parquet"


def footer(url: str, entry: storage.Entry, limits: IoConfig | None = None) -> pq.FileMetaData:
    """The part's Parquet footer: from this machine's footer cache when the part's ETag and size
    are those cached, else read off the object's tail (two ranged GETs) and cached (a footer-only
    Parquet file, written to a temp name and renamed). Raises pyarrow/OS errors for a part that
    is not Parquet (the store records it as unreadable)."""
    cached = _footer_path(url, entry, limits)
    try:
        return pq.read_metadata(cached)
    except (OSError, pa.ArrowException):
        pass
    fs, path = storage.filesystem(url)
    with storage._guarded(url, lambda: fs.open(path, "rb", block_size=1 << 16, cache_type="bytes")) as f:
        md = pq.read_metadata(f)
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_name(f".{cached.name}.{secrets.token_hex(4)}.tmp")
    try:
        md.write_metadata_file(str(tmp))
        os.replace(tmp, cached)
    except OSError:  # a read-only or full cache folder: the footer is still used, just not kept
        tmp.unlink(missing_ok=True)
    return md


def footer_schema(md: pq.FileMetaData) -> pa.Schema:
    """The part's Arrow schema with its key-value metadata (`lcd.masks.images`, config)."""
    return md.schema.to_arrow_schema().with_metadata(md.metadata or {})


def row_groups_for(md: pq.FileMetaData, image_id: str) -> list[int]:
    """Row groups whose image_id min/max statistics may hold `image_id` (all, where a row group
    has none: another writer's file)."""
    leaves = [md.schema.column(i).path for i in range(len(md.schema))]
    col = leaves.index("image_id") if "image_id" in leaves else None
    out = []
    for i in range(md.num_row_groups):
        st = md.row_group(i).column(col).statistics if col is not None else None
        if st is None or not st.has_min_max or st.min <= image_id <= st.max:
            out.append(i)
    return out


def read_image_rows(url: str, md: pq.FileMetaData, image_id: str, target: pa.Schema,
                    columns: list[str] | None) -> pa.Table:
    """The rows of `image_id` in one part, read by row group, as `target` (MASK_SCHEMA) columns
    (`columns`, or all): a column the part lacks is null, the others cast to the target type."""
    groups = row_groups_for(md, image_id)
    names = columns or target.names
    if not groups:
        return pa.schema([target.field(n) for n in names]).empty_table()
    fs, path = storage.filesystem(url)
    present = [n for n in dict.fromkeys([*names, "image_id"]) if n in md.schema.to_arrow_schema().names]
    with storage._guarded(url, lambda: fs.open(path, "rb", cache_type="none")) as f:
        table = pq.ParquetFile(f, metadata=md, pre_buffer=True).read_row_groups(groups, columns=present)
    table = table.filter(pc.equal(table.column("image_id"), image_id))
    cols = [table.column(n).cast(target.field(n).type) if n in table.column_names
            else pa.nulls(table.num_rows, target.field(n).type) for n in names]
    return pa.Table.from_arrays(cols, schema=pa.schema([target.field(n) for n in names]))
