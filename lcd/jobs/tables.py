"""Results and failures as Parquet tables with explicit pyarrow schemas.

Each shard writes its own pair of tables (`tables/results-<i>-of-<n>.parquet`), atomically, when
it finishes; a re-run of the shard replaces them. The run's tables are the concatenation of the
shard tables of that sharding, so an item appears once however often its shard was retried.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

from lcd.io import storage
from lcd.io.atomic import atomic_path

RESULTS_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("image", pa.string()),
    ("region", pa.string()),  # mask path or selection rule
    ("concept", pa.string()),
    ("prompt", pa.string()),
    ("seed", pa.int64()),
    ("output", pa.string()),
    ("input_hash", pa.string()),  # sha256 of input bytes + item fields + config + model pin
    ("status", pa.string()),  # "edited" | "skipped" (output already there with this hash)
    ("shard", pa.string()),
    ("seconds", pa.float64()),
    # the output file as this run wrote or checked it (lcd.io.storage.Entry): a later run trusts the
    # row only while the file's size and stamp are unchanged, and re-checks the file otherwise
    ("output_size", pa.int64()),
    ("output_stamp", pa.string()),  # mtime_ns:ctime_ns of a file, ETag of an object
])
FAILURES_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("item", pa.string()),  # the file / field the error is about
    ("stage", pa.string()),  # "manifest" | "input" | "concept" | "edit"
    ("error", pa.string()),  # exception class
    ("message", pa.string()),
    ("shard", pa.string()),
])

# the file hashes a shard's run used (lcd.io.hashing.hash_rows): its next run reads no unchanged input
HASHES_SCHEMA = pa.schema([
    ("path", pa.string()),  # absolute path or URL
    ("size", pa.int64()),
    ("stamp", pa.string()),  # mtime_ns of a file, ETag (or mtime) of an object
    ("sha256", pa.string()),
])

# what the shard's item hashes depend on, stamped from metadata (lcd.jobs.deps): the coordinator's
# check re-stamps these refs and never reads an input, a store, a concept or a weight file
DEPS_SCHEMA = pa.schema([
    ("ref", pa.string()),  # absolute path, URL, hub id, or "settings"
    ("kind", pa.string()),  # "file" | "tree" | "pin" | "settings"
    ("stamp", pa.string()),  # size and ETag / mtime, a listing's digest, or "absent"
])


def shard_name(index: int, num_shards: int) -> str:
    return f"{index:05d}-of-{num_shards:05d}"


def write_table(path: str | Path, rows: Iterable[dict], schema: pa.Schema) -> Path:
    """Rows (dicts with exactly the schema's keys) -> Parquet, written atomically. Text that is
    not UTF-8 (table_text) is written backslash-escaped rather than failing the whole table."""
    table = pa.Table.from_pylist([{k: table_text(v) for k, v in r.items()} for r in rows], schema=schema)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return storage.normalize(path)


def table_text(v):
    """A str that Parquet can hold: a lone surrogate (a path given as "t\\udcff.png" in JSON names
    a file of non-UTF-8 bytes; it reaches results, failures and hashes rows) made pyarrow raise at
    the shard's table write, losing every row of the shard. Anything else is returned as is."""
    if not isinstance(v, str) or v.isascii():
        return v
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        return v.encode("utf-8", "backslashreplace").decode("utf-8")
    return v


def read_table(path: str | Path, schema: pa.Schema | None = None, columns: list[str] | None = None) -> pa.Table:
    """A Parquet table from a local path or a remote URL (lcd.io.storage)."""
    with storage.open_read(path) as f:
        return pq.read_table(f, schema=schema, columns=columns)


def shard_table_path(out_root: str | Path, kind: str, shard: str) -> Path:
    """`<out_root>/tables/<kind>-<shard>.parquet`, kind "results", "failures", "hashes" or "deps"."""
    return storage.join(out_root, "tables", f"{kind}-{shard}.parquet")


def running_marker_path(out_root: str | Path, shard: str) -> str | Path:
    """`<out_root>/tables/running-<shard>`: written by a local shard run before its first output,
    removed with its tables (write_shard_tables). Found at a run's start, it says the last run
    was killed and may have left temp files (lcd.io.atomic) in edits/ and regions/: the one case
    where the shard lists those folders."""
    return storage.join(out_root, "tables", f"running-{shard}")


def write_shard_tables(out_root: str | Path, shard: str, results: list[dict], failures: list[dict],
                       hashes: list[dict] | None = None, deps: list[dict] | None = None) -> None:
    """A finished shard's results, failures and (when given) hashes and deps tables, atomically,
    then its running marker removed: the shard is done. The deps table goes first: a results
    table is never newer than the deps that describe it."""
    if deps is not None:
        write_table(shard_table_path(out_root, "deps", shard), deps, DEPS_SCHEMA)
    write_table(shard_table_path(out_root, "results", shard), results, RESULTS_SCHEMA)
    write_table(shard_table_path(out_root, "failures", shard), failures, FAILURES_SCHEMA)
    if hashes is not None:
        write_table(shard_table_path(out_root, "hashes", shard), hashes, HASHES_SCHEMA)
    if not storage.is_remote(out_root):  # remote roots stage temps locally: no marker there
        storage.remove(running_marker_path(out_root, shard))


class LedgerRow(NamedTuple):
    """A shard's previous result for one id: the input_hash its output was made from, and that
    output's size and stamp then (None in tables written before they were kept)."""

    input_hash: str
    output_size: int | None
    output_stamp: str | None


def read_ledger(path: str | Path) -> dict[str, LedgerRow]:
    """{id: LedgerRow} of a shard's previous results table; {} when it is absent or unreadable
    (then every existing output is checked by its own metadata instead)."""
    try:
        t = read_table(path, schema=RESULTS_SCHEMA, columns=["id", "input_hash", "output_size", "output_stamp"])
    except Exception:  # noqa: BLE001 - missing, partial or foreign file: no ledger
        return {}
    cols = [t.column(c).to_pylist() for c in ("id", "input_hash", "output_size", "output_stamp")]
    return {i: LedgerRow(h, size, stamp) for i, h, size, stamp in zip(*cols)}


def read_rows(path: str | Path, schema: pa.Schema) -> list[dict]:
    """Rows of a shard table of `schema`; [] when it is absent or unreadable."""
    try:
        return read_table(path, schema=schema).to_pylist()
    except Exception:  # noqa: BLE001 - missing, partial or foreign file: nothing recorded
        return []


def read_known_hashes(path: str | Path) -> list[dict]:
    """Rows of a shard's hashes table; [] when it is absent or unreadable (then files are read)."""
    try:
        t = read_table(path, schema=HASHES_SCHEMA)
    except Exception:  # noqa: BLE001 - missing, partial or foreign file: hash from the bytes
        return []
    cols = [t.column(c).to_pylist() for c in HASHES_SCHEMA.names]
    return [dict(zip(HASHES_SCHEMA.names, r)) for r in zip(*cols)]


def shard_table_paths(tables_dir: str | Path, kind: str, num_shards: int) -> list[Path]:
    """Paths of the `kind` ("results" / "failures") tables of all shards of one sharding."""
    return [storage.join(tables_dir, f"{kind}-{shard_name(i, num_shards)}.parquet") for i in range(num_shards)]


def merge_tables(paths: Iterable[str | Path], schema: pa.Schema, dest: str | Path) -> int:
    """Stream the existing shard tables into `dest` (atomic), one shard's table in memory at a
    time; -> rows written. Missing shards are absent rows: the caller compares the ids with the
    plan to decide whether the run is complete."""
    n = 0
    with atomic_path(dest) as tmp:
        with pq.ParquetWriter(tmp, schema) as w:
            for p in paths:
                if storage.exists(p):
                    t = read_table(p, schema)
                    w.write_table(t)
                    n += t.num_rows
    return n


def sample_rows(path: str | Path, n: int, columns: list[str]) -> list[dict]:
    """`n` rows spread evenly over a table (first and last included), reading only `columns`."""
    t = read_table(path, columns=columns)
    if t.num_rows <= n:
        return t.to_pylist()
    step = (t.num_rows - 1) / max(n - 1, 1)
    return t.take(pa.array(sorted({round(k * step) for k in range(n)}), pa.int64())).to_pylist()


def merged_accounting(res: pa.Table, fail: pa.Table, expected_ids: pa.Array) -> dict:
    """Counts of a merged run, computed in Arrow (no Python list per row): {edited, skipped,
    failed, per_shard, missing (first few ids), n_missing, duplicated}. `res` has columns id,
    status, shard; `fail` id, shard; `expected_ids` are the planned ids plus the manifest's
    failure ids."""
    import pyarrow.compute as pc

    def counts(a: pa.Array) -> dict:
        return {k.as_py(): v.as_py() for k, v in zip(*pc.value_counts(a).flatten())} if len(a) else {}

    status = counts(res.column("status").combine_chunks())
    per_shard = counts(pa.concat_arrays([res.column("shard").combine_chunks(), fail.column("shard").combine_chunks()]))
    fail_ids, fail_shards = fail.column("id").combine_chunks(), fail.column("shard").combine_chunks()
    done = pa.concat_arrays([res.column("id").combine_chunks(), fail_ids])
    missing = pc.filter(expected_ids, pc.invert(pc.is_in(expected_ids, value_set=done)))
    # a duplicate manifest entry is a manifest failure row beside its first entry's row: counted
    # once, as that failure; only rows the shards wrote twice are "duplicated" (a lost update)
    by_shards = pa.concat_arrays([res.column("id").combine_chunks(),
                                  pc.filter(fail_ids, pc.not_equal(fail_shards, "manifest"))])
    return {"edited": status.get("edited", 0), "skipped": status.get("skipped", 0), "failed": fail.num_rows, "per_shard": per_shard, "missing": missing.slice(0, 5).to_pylist(),
            "n_missing": len(missing), "duplicated": len(by_shards) - pc.count_distinct(by_shards).as_py()}
