"""Masks on disk: Parquet parts with an explicit schema, a failures table, and the read API.

Layout of an output folder `out/`:

    out/masks/part-00000.parquet ...   mask rows (MASK_SCHEMA), one file per batch of images
    out/failures.parquet               image_id, image, error_type, error (FAILURE_SCHEMA)

Each part is written to a temp file and renamed, so a reader (and a resumed run) only ever sees
whole parts. Every part lists the images it finished, with their SHA-256, in its Parquet key-value
metadata (`lcd.masks.images`), including images that produced no mask; a re-run takes the union of
these lists as "done" and skips those images, so a killed run resumes with no duplicate rows and
no redone images. `pd.read_parquet("out/masks")` and `pyarrow.dataset` read the folder directly.
"""

from __future__ import annotations

import functools
import json
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lcd.errors import LcdError
from lcd.io import storage
from lcd.io.atomic import atomic_path
from lcd.masks import remote
from lcd.masks.rle import decode_rles, encode_rle

if TYPE_CHECKING:
    from lcd.masks.rows import CheckedRows

MASKS_DIR = "masks"
FAILURES_FILE = "failures.parquet"
IMAGES_META = b"lcd.masks.images"
CONFIG_META = b"lcd.masks.config"
# in a local staging store (lcd.jobs.masking): the URL of the store its parts are uploaded to
UPSTREAM_FILE = ".lcd-upstream"

PROMPT_TYPE = pa.struct([
    # variable-size lists: pyarrow 15 cannot write null fixed-size lists to Parquet
    ("points", pa.list_(pa.list_(pa.float32()))),  # [[x, y], ...] pixels
    ("labels", pa.list_(pa.int32())),  # 1 foreground, 0 background
    ("box", pa.list_(pa.float32())),  # [x0, y0, x1, y1] pixels
    ("text", pa.string()),
])
RLE_TYPE = pa.struct([
    pa.field("size", pa.list_(pa.int32(), 2), nullable=False),  # [H, W], COCO order
    pa.field("counts", pa.string(), nullable=False),  # COCO compressed counts string
])
MODEL_TYPE = pa.struct([("type", pa.string()), ("ref", pa.string()), ("sha256", pa.string()), ("revision", pa.string())])

MASK_SCHEMA = pa.schema([
    pa.field("image_id", pa.string(), nullable=False),
    pa.field("image", pa.string(), nullable=False),  # path or URL as given in the manifest
    pa.field("image_sha256", pa.string(), nullable=False),
    pa.field("width", pa.int32(), nullable=False),
    pa.field("height", pa.int32(), nullable=False),
    pa.field("mask_id", pa.int32(), nullable=False),  # 0..n-1 within the image
    pa.field("source", pa.string(), nullable=False),  # auto | point | box | text
    pa.field("prompt_index", pa.int32()),  # index in the image's prompt list (null for auto)
    pa.field("multimask_index", pa.int8()),  # 0..2 for SAM's multimask candidates, else null
    pa.field("prompt", PROMPT_TYPE),
    pa.field("rle", RLE_TYPE, nullable=False),
    pa.field("bbox", pa.list_(pa.int32(), 4), nullable=False),  # XYWH pixels
    pa.field("area", pa.int64(), nullable=False),
    pa.field("predicted_iou", pa.float32(), nullable=False),
    pa.field("stability_score", pa.float32(), nullable=False),
    pa.field("model", MODEL_TYPE, nullable=False),
])

FAILURE_SCHEMA = pa.schema([
    pa.field("image_id", pa.string(), nullable=False),
    pa.field("image", pa.string(), nullable=False),
    pa.field("error_type", pa.string(), nullable=False),
    pa.field("error", pa.string(), nullable=False),
])


def image_rows(image_id: str, image: str, sha: str, width: int, height: int, records, model: dict) -> list[dict]:
    """MaskRecords of one image -> rows of MASK_SCHEMA (RLE-encoded)."""
    rows = []
    for k, r in enumerate(records):
        rows.append({
            "image_id": image_id, "image": image, "image_sha256": sha, "width": width, "height": height,
            "mask_id": k, "source": r.source, "prompt_index": r.prompt_index,
            "multimask_index": r.multimask_index, "prompt": r.prompt.to_row() if r.prompt else None,
            "rle": encode_rle(r.mask), "bbox": list(r.bbox), "area": r.area,
            "predicted_iou": r.predicted_iou, "stability_score": r.stability_score, "model": model,
        })
    return rows


def part_order(p: "Path | str") -> tuple[int, str]:
    """Parts sort by their sequence number as a number (part-100000 after part-99999), then name
    (a local Path, or a part's URL)."""
    name = str(p).rstrip("/").rsplit("/", 1)[-1]
    stem = name.rsplit(".", 1)[0]
    seq = stem.split("-")[1] if stem.count("-") else ""
    return (int(seq) if seq.isdigit() else -1, name)


def is_part_name(name: str) -> bool:
    return name.startswith("part-") and name.endswith(".parquet")


def part_paths(out: str | Path) -> list[Path]:
    return sorted((Path(out) / MASKS_DIR).glob("part-*.parquet"), key=part_order)


def _leaf_paths(schema: pa.Schema) -> list[str]:
    """Parquet column paths of every leaf of `schema` ('rle.counts', 'bbox.list.element', ...)."""
    import io

    buf = io.BytesIO()
    pq.write_table(schema.empty_table(), buf)
    parquet_schema = pq.ParquetFile(pa.BufferReader(buf.getvalue())).schema
    return [parquet_schema.column(i).path for i in range(len(parquet_schema))]


COUNTS_COLUMN = "rle.counts"
# every column but the counts is dictionary-encoded (ids, paths, model refs repeat row after row);
# the counts are unique per mask, so a dictionary only adds an index per row, and
# DELTA_LENGTH_BYTE_ARRAY stores the string lengths apart from the characters, which leaves the
# codec a clean run of COCO characters. Nor do the counts get min/max statistics: nobody filters
# on them, and each page and row group would carry two whole counts strings uncompressed.
@functools.cache
def dictionary_columns() -> tuple[str, ...]:
    return tuple(c for c in _leaf_paths(MASK_SCHEMA) if c != COUNTS_COLUMN)


def write_part(out: str | Path, rows: "list[dict] | pa.Table", images: list[dict], config: dict, row_group_rows: int,
               codec: str = "zstd", level: int | None = 19) -> Path:
    """Write one part atomically: rows (dicts, or a table of MASK_SCHEMA) + the list of images it
    completes (in file metadata).

    codec/level: Parquet page compression (see MasksConfig.parquet_codec); a part is written once
    and read many times, so the default spends write time (zstd 19) for about 8% smaller counts.
    """
    parts = part_paths(out)
    seq = max(part_order(parts[-1])[0] + 1, 0) if parts else 0
    # the random suffix keeps two runs writing into one folder from renaming over each other's part
    dest = Path(out) / MASKS_DIR / f"part-{seq:05d}-{uuid.uuid4().hex[:8]}.parquet"
    meta = {IMAGES_META: json.dumps(images).encode(), CONFIG_META: json.dumps(config, sort_keys=True).encode()}
    schema = MASK_SCHEMA.with_metadata(meta)
    table = rows.cast(schema) if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows, schema=schema)
    with atomic_path(dest) as tmp:
        pq.write_table(table, tmp, row_group_size=row_group_rows, compression=codec, compression_level=level,
                       use_dictionary=list(dictionary_columns()), write_statistics=list(dictionary_columns()),
                       column_encoding={COUNTS_COLUMN: "DELTA_LENGTH_BYTE_ARRAY"})
    return dest


def _images_listed(schema: pa.Schema) -> list[dict] | None:
    """A part's `lcd.masks.images` listing (None when it has none, as in another tool's file).
    Raises ValueError when the listing is not JSON."""
    meta = schema.metadata or {}
    return json.loads(meta[IMAGES_META]) if IMAGES_META in meta else None


def settings_key(settings: dict, model: dict, prompts_json: str | None) -> str:
    """sha256 of what decides an image's masks besides its bytes: the result settings
    (MasksConfig.result_settings), the SAM weights (type + sha256, else ref) and the prompts JSON.
    Stored with each image in `lcd.masks.images`; a re-run recomputes images whose key changed."""
    import hashlib

    weights = {"type": model.get("type"), "id": model.get("sha256") or model.get("ref")}
    blob = json.dumps({"settings": settings, "model": weights, "prompts": prompts_json or ""}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def done_images(out: str | Path) -> dict[tuple[str, str], dict]:
    """(image_id, sha256) -> image entry (with its `settings` key), for every image a finished
    part records; the newest part wins. A part that cannot be read (0 bytes, truncated, not
    Parquet) records nothing, so its images are redone. A store at a URL is read off its parts'
    footers; a staging store naming one in UPSTREAM_FILE adds that store's images (older)."""
    done: dict[tuple[str, str], dict] = {}
    upstream = None if remote.is_url(out) else Path(out) / UPSTREAM_FILE
    if upstream is not None and upstream.is_file():  # a staging store: its store's images first
        done.update(done_images(upstream.read_text().strip()))
    try:
        entries = _part_listing(out)
    except LcdError:  # no store there yet
        entries = {}
    for p in sorted(entries, key=part_order) if remote.is_url(out) else part_paths(out):
        try:
            images = _images_listed(_read_schema(p, entries)) or []
        except (pa.ArrowException, OSError, ValueError):
            continue
        for im in images:
            done[(im["image_id"], im["image_sha256"])] = im
    return done


def read_failures(out: str | Path) -> pa.Table:
    p = Path(out) / FAILURES_FILE
    return pq.read_table(p, schema=FAILURE_SCHEMA) if p.exists() else FAILURE_SCHEMA.empty_table()


def write_failures(out: str | Path, new: Sequence[dict], retried: Iterable[str]) -> Path:
    """Rewrite the failures table atomically: old rows of images not retried + the new rows."""
    retried = set(retried)
    old = [r for r in read_failures(out).to_pylist() if r["image_id"] not in retried]
    dest = Path(out) / FAILURES_FILE
    table = pa.Table.from_pylist(old + list(new), schema=FAILURE_SCHEMA)
    with atomic_path(dest) as tmp:
        pq.write_table(table, tmp)
    return dest


# --- read API ---------------------------------------------------------------------------------

def _read_schema(f: "Path | str", entries: dict) -> pa.Schema:
    """A part's schema with its metadata: a local file's footer, or a remote part's from this
    machine's footer cache (lcd.masks.remote; `entries`: the listing that found the part)."""
    return pq.read_schema(f) if isinstance(f, Path) else remote.footer_schema(remote.footer(f, entries[f]))


def _part_listing(path: str | Path) -> dict:
    """{part URL: listing Entry} of a store on object storage (one listing), {} for a local one."""
    return remote.part_entries(str(path), MASKS_DIR, is_part_name) if remote.is_url(path) else {}


def _part_files(path: str | Path) -> list[Path]:
    p = Path(path)
    if p.is_dir() and (p / MASKS_DIR).is_dir():
        p = p / MASKS_DIR
    if not p.exists():
        raise LcdError(f"{path}: masks table not found", item=str(path))
    files = sorted(p.glob("part-*.parquet"), key=part_order) if p.is_dir() else [p]
    if not files:
        raise LcdError(f"{path}: no mask parts (part-*.parquet) in folder", item=str(path))
    return files


# columns a reader can do without: read as null, the area is then taken from the counts and the box
# from the decoded mask when a selection needs it (lcd.masks.rows)
OPTIONAL_COLUMNS = frozenset({"area", "bbox"})


def _schema_problem(schema: pa.Schema) -> str | None:
    """Why a part cannot serve MASK_SCHEMA reads (a missing column), or None. Column types are
    not compared here (writers name list children differently); a part whose columns do not cast
    fails its read, and is then skipped and recorded (MaskStore._read)."""
    missing = [f.name for f in MASK_SCHEMA if f.name not in schema.names and f.name not in OPTIONAL_COLUMNS]
    return f"not a masks part: no column(s) {', '.join(map(repr, missing))}" if missing else None


class MaskStore:
    """A masks table opened for many lookups: every part's footer is read once, and image_id ->
    the parts that list it (their `lcd.masks.images` metadata), so a lookup opens only those
    files instead of every part in the store. Parts without that metadata (a Parquet file
    written by another tool) are searched on every lookup. Built from a store folder, its
    `masks/` folder, or one Parquet file. The index is a snapshot: open a new MaskStore after
    more masks are computed.
    """

    def __init__(self, path: str | Path):
        self.path = str(storage.normalize(path)) if remote.is_url(path) else Path(path)
        self.entries = _part_listing(path)  # on object storage: part URL -> size and ETag
        self.files = sorted(self.entries, key=part_order) if self.entries else _part_files(path)
        self.by_image: dict[str, list[Path]] = {}
        self.unindexed: list[Path] = []
        self.bad: dict[Path, str] = {}  # part -> why it cannot be read; skipped, named in lookups' errors
        for f in self.files:
            try:
                schema = _read_schema(f, self.entries)
            except (pa.ArrowException, OSError) as e:  # 0 bytes, truncated, not Parquet
                self.bad[f] = f"{type(e).__name__}: {e}"
                continue
            if problem := _schema_problem(schema):
                self.bad[f] = problem
                continue
            try:
                listed = _images_listed(schema)
                ids = None if listed is None else [im["image_id"] for im in listed]
            except (ValueError, TypeError, KeyError) as e:
                self.bad[f] = f"unreadable {IMAGES_META.decode()} metadata: {e}"
                continue
            if ids is None:
                self.unindexed.append(f)
                continue
            for image_id in ids:
                self.by_image.setdefault(image_id, []).append(f)

    def _bad_note(self) -> str:
        if not self.bad:
            return ""
        names = ", ".join(f"{part_order(p)[1]} ({why[:120]})" for p, why in list(self.bad.items())[:3])
        return f"; {len(self.bad)} unreadable part(s) skipped: {names}"

    def _id_hint(self, image_id: str) -> str:
        """For an id the store does not list: the closest stored ids (a path typed for a stem)."""
        if image_id in self.by_image or not self.by_image:
            return ""
        import difflib

        near = difflib.get_close_matches(Path(image_id).stem, list(self.by_image), n=3, cutoff=0.75)
        some = near or sorted(self.by_image)[:3]
        return (f"; the store lists {len(self.by_image)} image id(s) ({'closest' if near else 'e.g.'}: "
                f"{', '.join(some)}); ids are the file stems unless the masks manifest set image_id")

    def _read(self, files: list[Path], image_id: str, cols: list[str] | None) -> pa.Table | None:
        """The image's rows from `files`; a part that fails to read is recorded in `bad` and
        skipped (read one by one only when the combined read fails)."""
        import pyarrow.dataset as ds

        def read(fs: list[Path]) -> pa.Table:
            if isinstance(self.path, str):  # on object storage: by footer and row group, part by part
                return pa.concat_tables([remote.read_image_rows(f, remote.footer(f, self.entries[f]), image_id,
                                                                MASK_SCHEMA, cols) for f in fs])
            dataset = ds.dataset([str(f) for f in fs], schema=MASK_SCHEMA, format="parquet")
            return dataset.to_table(filter=ds.field("image_id") == image_id, columns=cols)

        try:
            return read(files)
        except (pa.ArrowException, OSError):
            pass
        tables = []
        for f in files:
            try:
                tables.append(read([f]))
            except (pa.ArrowException, OSError) as e:
                self.bad[f] = f"{type(e).__name__}: {e}"
        return pa.concat_tables(tables) if tables else None

    def _files_for(self, image_id: str) -> list[Path]:
        """The parts an image's rows are read from: the newest part listing it, and unindexed ones."""
        return sorted(set(self.by_image.get(image_id, [])[-1:] + self.unindexed) - set(self.bad), key=part_order)

    def source_of(self, image_id: str) -> str:
        """Where an image's rows come from, for messages: its part, or the store when several."""
        files = self._files_for(image_id)
        return str(files[0]) if len(files) == 1 else str(self.path)

    def rows(self, image_id: str, columns: list[str] | None = None) -> pa.Table:
        """All mask rows of one image, in mask_id order, from the newest part that lists it (a
        re-run with other settings or new bytes stores the image again; the old rows stay in their
        part) and, within other tools' unindexed parts, its newest SHA-256 (see read_rows).
        Unreadable parts are skipped; if the image has no rows, the error names them."""
        files = self._files_for(image_id)
        cols = None if columns is None else list(dict.fromkeys([*columns, "image_sha256", "mask_id"]))
        table = self._read(files, image_id, cols) if files else None
        if table is None or table.num_rows == 0:
            raise LcdError(f"{image_id}: no masks stored for this image_id in {self.path}{self._bad_note()}"
                           f"{self._id_hint(image_id)}", item=image_id)
        # the file changed between runs: the newest rows are the last part's
        if pa.compute.count_distinct(table.column("image_sha256")).as_py() > 1:
            last = table.column("image_sha256")[table.num_rows - 1].as_py()
            table = table.filter(pa.compute.equal(table.column("image_sha256"), last))
        table = table.sort_by("mask_id")
        return table if columns is None else table.select(columns)

    def checked(self, image_id: str, image_size: tuple[int, int] | None = None,
                max_pixels: int | None = None) -> tuple[pa.Table, "CheckedRows"]:
        """image_id -> (its rows, CheckedRows): checked before any decode (lcd.masks.rows), errors
        naming the part they come from."""
        from lcd.masks.rows import check_image_rows

        table = self.rows(image_id)
        return table, check_image_rows(table, where=self.source_of(image_id), image_id=image_id,
                                       image_size=image_size, max_pixels=max_pixels)

    def masks(self, image_id: str) -> tuple[pa.Table, np.ndarray]:
        """image_id -> (its rows, (N, H, W) bool masks in mask_id order), all decoded: N*H*W bytes
        (lcd.masks.read.select_mask decodes only the one it selects)."""
        table, _ = self.checked(image_id)
        return table, decode_table_masks(table)



def open_store(path: str | Path | MaskStore) -> MaskStore:
    """A MaskStore for `path` (returned as is when it already is one)."""
    return path if isinstance(path, MaskStore) else MaskStore(path)


def read_rows(path: str | Path | MaskStore, image_id: str, columns: list[str] | None = None) -> pa.Table:
    """All mask rows of one image. Open a MaskStore once for many lookups; a path re-reads the
    parts' footers on every call."""
    return open_store(path).rows(image_id, columns)


def decode_table_masks(table: pa.Table) -> np.ndarray:
    """Rows of one image -> (N, H, W) bool, all RLEs decoded in one vectorised pass."""
    if table.num_rows == 0:
        return np.zeros((0, 0, 0), dtype=bool)
    rle = table.column("rle").combine_chunks()
    counts = rle.field("counts").to_pylist()
    h, w = rle.field("size")[0].as_py()
    ids = [f"{a}#{b}" for a, b in zip(table.column("image_id").to_pylist(), table.column("mask_id").to_pylist())]
    return decode_rles(counts, h, w, names=ids)


def read_masks(path: str | Path | MaskStore, image_id: str) -> tuple[pa.Table, np.ndarray]:
    """image_id -> (its rows, (N, H, W) bool masks in mask_id order)."""
    return open_store(path).masks(image_id)
