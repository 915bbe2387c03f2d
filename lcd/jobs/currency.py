"""Which items of a shard are current, from what the shard recorded under out_root: its ledger
(results table rows with the plan's fields and each output's size and stamp), its deps table
(lcd.jobs.deps) and the outputs' metadata.

`current_report` is the coordinator's check (a resume starts no process for a finished shard);
the shard itself (lcd.jobs.editing) skips items by the same rule (`output_current`), so the two
never disagree. Nothing here opens an input, a masks-store part, a concept or a weight file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from lcd.config import EditConfig, ModelsConfig
from lcd.io import storage
from lcd.io.config import IoConfig
from lcd.jobs import tables
from lcd.jobs.deps import first_change, settings_digest, shard_deps
from lcd.jobs.hashes import Engine
from lcd.jobs.layout import is_current, output_name, output_path, output_stats, usable
from lcd.jobs.manifest import ManifestItem
from lcd.masks.config import MasksConfig

if TYPE_CHECKING:
    from lcd.masks.store import MaskStore


@dataclass
class ShardReport:
    """Rows for the results / failures tables (schemas in lcd.jobs.tables)."""

    results: list[dict] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)
    hashes: list[dict] = field(default_factory=list)  # file hashes the run used (tables.HASHES_SCHEMA)
    deps: list[dict] | None = None  # what the item hashes depend on, stamped (tables.DEPS_SCHEMA, lcd.jobs.deps)

    def counts(self) -> dict[str, int]:
        c = {"edited": 0, "skipped": 0, "failed": len(self.failures)}
        for r in self.results:
            c[r["status"]] += 1
        return c


def current_report(
    items: list[ManifestItem],
    *,
    out_root: str | Path,
    cfg: EditConfig,
    models: ModelsConfig,
    shard: str,
    listing: "dict[str, storage.Entry] | None" = None,
    engine: Engine = "diffusion",
    concepts_root: str | Path | None = None,
    masks_store: "str | Path | MaskStore | None" = None,
    masks_cfg: MasksConfig | None = None,
    io_cfg: IoConfig | None = None,
) -> ShardReport | None:
    """The report a run of this shard would give if every item is current (all "skipped"), or None
    as soon as one is not: the coordinator's check, so that a resume starts no process for a
    finished shard. It reads only what the shard recorded under out_root and object metadata:
    the ledger (each item's row, with the plan's fields and the output's size and stamp), the
    deps table (lcd.jobs.deps: settings, inputs, concepts, masks store and model, re-stamped
    from HEADs and listings, never read), and the outputs (`listing`: one listing of edits/
    shared by all shards on object storage, lcd.jobs.layout.output_listing; None locally: the
    shard's outputs are lstat-ed). An output whose stamp changed is checked by its own metadata.
    No input, store part, concept or weight file is opened, and no path of another machine is
    needed: a local dep that is not here reads as changed."""
    del io_cfg  # nothing is read by URL here: object metadata only
    out_root = storage.normalize(out_root)
    rows = ledger_rows(tables.shard_table_path(out_root, "results", shard))
    if not items or any(plan_fields(it) != rows.get(it.id, (None,))[0] for it in items):
        return None  # a first run, a killed one, failures, or the plan's items changed
    deps = shard_deps(items, cfg=cfg, models=models, engine=engine, concepts_root=concepts_root,
                      masks_store=masks_store, masks_cfg=masks_cfg)
    if first_change(tables.read_rows(tables.shard_table_path(out_root, "deps", shard), tables.DEPS_SCHEMA),
                    settings_digest(cfg, models, engine, masks_cfg), deps) is not None:
        return None
    if listing is None:
        listing = output_stats(out_root, [output_name(it.id, cfg.output_format) for it in items])
    report = ShardReport()
    for it in items:
        known = rows[it.id][1]
        out = output_path(out_root, it.id, cfg.output_format)
        entry = listing.get(output_name(it.id, cfg.output_format))
        if not output_current(out, known.input_hash, entry, known):
            return None
        report.results.append(result_row(it, out, known.input_hash, "skipped", shard, 0.0, entry))
    return report


def plan_fields(it: ManifestItem) -> tuple:
    """The plan's fields of an item that its results row repeats (they enter its input hash)."""
    return (it.image, it.mask or it.select, it.concept, it.prompt, it.seed)


def ledger_rows(path) -> "dict[str, tuple[tuple, tables.LedgerRow]]":
    """{id: (plan_fields as recorded, LedgerRow)} of a shard's results table; {} when absent or unreadable."""
    cols = ["id", "image", "region", "concept", "prompt", "seed", "input_hash", "output_size", "output_stamp"]
    try:
        t = tables.read_table(path, schema=tables.RESULTS_SCHEMA, columns=cols)
    except Exception:  # noqa: BLE001 - missing, partial or foreign file: no ledger
        return {}
    v = [t.column(c).to_pylist() for c in cols]
    return {r[0]: (tuple(r[1:6]), tables.LedgerRow(*r[6:])) for r in zip(*v)}


def output_current(out: "str | Path", h: str, entry: "storage.Entry | None", known: "tables.LedgerRow | None") -> bool:
    """The rule for one output: a regular file of non-zero size (lcd.jobs.layout.usable); while its
    size and stamp are those the ledger recorded, the ledger's hash decides and nothing is opened
    (~3 us an item); otherwise (no row, or the file changed since) the file itself is checked
    (lcd.jobs.layout.is_current: whole, and made from `h`)."""
    if not usable(entry):
        return False
    if known is not None and (known.output_size, known.output_stamp) == (entry.size, entry.stamp):
        return known.input_hash == h
    return is_current(out, h, entry.size)


def result_row(it: ManifestItem, out: Path, h: str, status: str, shard: str, seconds: float,
         entry: "storage.Entry | None" = None) -> dict:
    return {"id": it.id, "image": it.image, "region": it.mask or it.select, "concept": it.concept,
            "prompt": it.prompt, "seed": it.seed, "output": str(out), "input_hash": h, "status": status,
            "shard": shard, "seconds": seconds, "output_size": entry.size if entry else None,
            "output_stamp": entry.stamp if entry else None}
