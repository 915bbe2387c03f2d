"""Shard plans: the manifest is read once, by the coordinator, into one small Parquet file per shard.

    <out_root>/plan/plan.json                          manifest sha256 and location, num_shards, counts
    <out_root>/plan/shard-<i>-of-<n>.parquet           exactly shard i's items (PLAN_SCHEMA)
    <out_root>/tables/failures-manifest.parquet        the manifest's bad entries

Why: with every shard parsing the whole manifest, the cost per item grows with the job (1M items
x 400 shards is hours of parsing). Planning streams the manifest once (JSON Lines by line,
Parquet by record batch) and validates each entry; memory holds one batch or one shard's rows and
the set of ids (duplicates are failures). A shard then reads only its own file. Valid items are spooled to one Parquet file in batches, then cut into shards:
of N items, shard s holds items [s*N//k, (s+1)*N//k) (contiguous, sizes differ by at most one),
and the same manifest bytes with the same `num_shards` give the same plan (a re-plan of an
unchanged manifest is skipped).

One out_root holds one job: a plan of another manifest file (another location and other bytes)
is refused unless `replan=True`, since re-planning would replace that job's tables; a manifest
edited in place (same location, new bytes) is re-planned, as DVC's edit stage needs.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from lcd.errors import LcdError
from lcd.io import storage
from lcd.io.atomic import atomic_path, write_text_atomic
from lcd.jobs import tables
from lcd.jobs.manifest import ManifestItem, file_entries, resolve_paths, validate_entries

PLAN_DIR = "plan"
PLAN_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("image", pa.string()),  # absolute (resolved against the manifest's folder) or a URL
    ("mask", pa.string()),
    ("select", pa.string()),
    ("concept", pa.string()),
    ("prompt", pa.string()),
    ("seed", pa.int64()),
])


@dataclass(frozen=True)
class Plan:
    """What planning found; `entries` counts every manifest entry, good or bad."""

    manifest_sha256: str
    num_shards: int
    entries: int
    items: int
    failures: int
    reused: bool = False
    manifest: str = ""  # the manifest's location (absolute path or URL); "" in plans written before it was kept


def shard_plan_path(out_root: str | Path, index: int, num_shards: int) -> Path:
    return storage.join(out_root, PLAN_DIR, f"shard-{tables.shard_name(index, num_shards)}.parquet")


def manifest_sha256(path: str | Path) -> str:
    """SHA-256 of the manifest file's bytes (the plan's reuse key); a local file or a URL."""
    h = hashlib.sha256()
    with storage.open_read(path) as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def check_num_shards(num_shards: int) -> None:
    if isinstance(num_shards, bool) or not isinstance(num_shards, int) or num_shards < 1:
        raise LcdError(f"num_shards must be an integer >= 1, got {num_shards!r}", item="num_shards")


def manifest_location(path: str | Path) -> str:
    """Where a manifest is, spelled one way: an absolute local path, or the URL."""
    p = storage.normalize(path)
    return str(p.resolve()) if isinstance(p, Path) else p


def check_same_job(old: Plan | None, sha: str, where: str, out_root: str | Path) -> None:
    """Raise LcdError when `out_root` already holds the plan of another manifest file: planning
    this one would replace the other job's shard plans and tables (results.parquet kept half of
    each). The same file with new bytes is the job's manifest edited, and is re-planned."""
    if old is None or old.manifest_sha256 == sha or not old.manifest or old.manifest == where:
        return
    raise LcdError(f"out_root {out_root} holds the edit-batch job of another manifest, {old.manifest} "
                   f"(sha256 {old.manifest_sha256}); planning {where} there would replace that job's tables. "
                   f"Give this job its own out_root, or re-plan on purpose (replan=True, --replan)",
                   item=str(out_root))


def write_plan(manifest: str | Path, out_root: str | Path, num_shards: int, batch_rows: int = 65536,
               replan: bool = False) -> Plan:
    """Stream `manifest` once into the shard files and the manifest-failures table (all atomic);
    -> the Plan. An existing plan of the same manifest bytes, location and `num_shards` is kept as
    it is (a byte-identical copy elsewhere is re-planned: its relative paths name other files); a
    plan of another manifest file is refused (check_same_job) unless `replan`."""
    # 1. check inputs; one job per out_root; reuse a plan of these exact bytes
    check_num_shards(num_shards)
    path = storage.normalize(manifest)  # a local file or a URL
    if not storage.is_file(path):
        raise LcdError(f"{path}: manifest not found", item=str(path))
    sha, where = manifest_sha256(path), manifest_location(path)
    old = read_plan(out_root)
    if not replan:
        check_same_job(old, sha, where, out_root)
    # the same bytes at another location are re-planned: relative paths resolve against the folder
    if old is not None and (old.manifest_sha256, old.num_shards) == (sha, num_shards) and old.manifest in ("", where) \
            and all(storage.exists(shard_plan_path(out_root, i, num_shards)) for i in range(num_shards)):
        if not old.manifest:  # a plan from before locations were kept: record this one
            old = Plan(**(asdict(old) | {"manifest": where}))
            write_text_atomic(storage.join(out_root, PLAN_DIR, "plan.json"), json.dumps(asdict(old), indent=1))
        return Plan(**(asdict(old) | {"reused": True}))
    # 2. one pass over the manifest: valid items -> a spool file (in batches), bad entries -> failures
    spool_dir = tempfile.TemporaryDirectory(prefix="lcd-plan-")  # local, whatever out_root is
    spool = Path(spool_dir.name) / "items.parquet"
    failures: list[dict] = []
    items = 0
    base = storage.parent(path)
    with pq.ParquetWriter(spool, PLAN_SCHEMA) as writer:
        rows: list[dict] = []
        for x in validate_entries(file_entries(path, batch_rows)):
            if isinstance(x, ManifestItem):
                rows.append(resolve_paths(x, base).model_dump())
                if len(rows) >= batch_rows:
                    items += _flush(writer, rows)
            else:
                failures.append({"id": x.id, "item": str(manifest), "stage": "manifest", "error": "ManifestError",
                                 "message": x.message, "shard": "manifest"})
        items += _flush(writer, rows)
    # 3. the spool cut into contiguous shards: shard s holds items [s*N//k, (s+1)*N//k)
    _cut_shards(spool, out_root, num_shards, items, batch_rows)
    spool_dir.cleanup()
    # 4. the manifest's failures, then plan.json last (it marks the plan complete)
    tables.write_table(storage.join(out_root, "tables", "failures-manifest.parquet"), failures, tables.FAILURES_SCHEMA)
    plan = Plan(sha, num_shards, items + len(failures), items, len(failures), manifest=where)  # one result per entry
    write_text_atomic(storage.join(out_root, PLAN_DIR, "plan.json"), json.dumps(asdict(plan), indent=1))
    return plan


def _flush(writer: pq.ParquetWriter, rows: list[dict]) -> int:
    n = len(rows)
    if n:
        writer.write_table(pa.Table.from_pylist(rows, schema=PLAN_SCHEMA))
        rows.clear()
    return n


def _cut_shards(spool: Path, out_root, num_shards: int, n_items: int, batch_rows: int) -> None:
    """Write shard after shard from the spool's batches; memory holds at most one shard's rows."""
    shard, rows = 0, []
    stop = n_items // num_shards  # end of shard 0
    j = 0
    for batch in pq.ParquetFile(spool).iter_batches(batch_size=batch_rows):
        for r in batch.to_pylist():
            while j >= stop and shard < num_shards - 1:
                _write_shard(out_root, shard, num_shards, rows)
                shard, rows = shard + 1, []
                stop = (shard + 1) * n_items // num_shards
            rows.append(r)
            j += 1
    while shard < num_shards:  # the last shard, and empty ones of a short manifest
        _write_shard(out_root, shard, num_shards, rows)
        shard, rows = shard + 1, []


def _write_shard(out_root, index: int, num_shards: int, rows: list[dict]) -> None:
    with atomic_path(shard_plan_path(out_root, index, num_shards)) as tmp:
        pq.write_table(pa.Table.from_pylist(rows, schema=PLAN_SCHEMA), tmp)


def read_plan(out_root: str | Path) -> Plan | None:
    """The plan under `out_root`, or None when there is none (or it is unreadable)."""
    p = storage.join(out_root, PLAN_DIR, "plan.json")
    try:
        return Plan(**{k: v for k, v in json.loads(storage.read_bytes(p)).items() if k != "reused"})
    except (OSError, ValueError, TypeError):
        return None


def read_shard_plan(out_root: str | Path, index: int, num_shards: int) -> list[ManifestItem]:
    """Shard `index`'s items, from its plan file only (never the manifest)."""
    check_num_shards(num_shards)
    if not 0 <= index < num_shards:
        raise LcdError(f"shard index must be in [0, {num_shards}), got {index}", item="shard_index")
    p = shard_plan_path(out_root, index, num_shards)
    if not storage.exists(p):
        raise LcdError(f"{p}: no shard plan; run the edit-batch coordinator (it plans the manifest) first",
                       item=str(p))
    return [ManifestItem.model_validate({k: v for k, v in r.items() if v is not None})
            for r in tables.read_table(p, schema=PLAN_SCHEMA).to_pylist()]


def plan_ids(out_root: str | Path, num_shards: int) -> pa.Array:
    """Every planned item id, in plan order (the id columns only, as one Arrow string array)."""
    parts = [tables.read_table(shard_plan_path(out_root, s, num_shards), columns=["id"]).column("id").combine_chunks()
             for s in range(num_shards)]
    return pa.concat_arrays(parts) if parts else pa.array([], pa.string())


def plan_items(out_root: str | Path, num_shards: int, ids: list[str]) -> dict[str, ManifestItem]:
    """The planned items with these ids (for contact sheets: a few rows of a large plan)."""
    import pyarrow.compute as pc

    want = pa.array(ids, pa.string())
    rows = []
    for s in range(num_shards):  # a handful of ids: filter each shard file's rows in Arrow
        t = tables.read_table(shard_plan_path(out_root, s, num_shards), schema=PLAN_SCHEMA)
        rows += t.filter(pc.is_in(t.column("id"), value_set=want)).to_pylist()
    return {r["id"]: ManifestItem.model_validate({k: v for k, v in r.items() if v is not None}) for r in rows}
