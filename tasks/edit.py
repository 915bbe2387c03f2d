"""Edit-batch tasks: plan the manifest, edit one shard, merge the shard tables, publish the run's artifacts."""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from lcd.config import EditConfig, load_params
from lcd.io import storage
from lcd.io.atomic import atomic_path, write_text_atomic
from lcd.io.images import save_png
from lcd.jobs import tables
from lcd.jobs.contact import contact_sheet, failure_triples, result_triples, sheet_labels
from lcd.jobs.editing import Engine, current_report, run_edit_shard
from lcd.jobs.layout import output_listing
from lcd.jobs.plots import line_chart
from lcd.jobs.plan import plan_ids, plan_items, read_shard_plan, write_plan


@task(cache_policy=NO_CACHE)  # loads a model; results live on disk, Prefect must not cache them
def edit_shard(manifest: str, out_root: str, shard_index: int, num_shards: int, params_path: str,
               edit: EditConfig | None, engine: Engine, concepts_root: str | None,
               masks_store: str | None = None, standin_batch_s: float = 0.0) -> dict:
    """Edit shard `shard_index` of `num_shards` from its plan file (the coordinator planned
    `manifest`; the shard never reads it); write its results/failures tables; -> counts.
    `standin_batch_s`: the noop engine's sleep per batch (bench/scale.py's stand-in GPU)."""
    params = load_params(params_path)
    items = read_shard_plan(out_root, shard_index, num_shards)
    name = tables.shard_name(shard_index, num_shards)
    report = run_edit_shard(items, out_root=out_root,
                            cfg=edit or params.edit, models=params.models, shard=name,
                            engine=engine, concepts_root=concepts_root,
                            masks_store=masks_store,
                            masks_cfg=params.masks, standin_batch_s=standin_batch_s, io_cfg=params.io)
    tables.write_shard_tables(out_root, name, report.results, report.failures, report.hashes, report.deps)
    _log_fetches(name)
    return {"shard": name, **report.counts()}


def _log_fetches(shard: str) -> None:
    """One line of what this shard's process took from the per-machine fetch cache (lcd.io.cache):
    on a worker's second shard, weights and concepts are all hits, nothing fetched."""
    from lcd.io.cache import STATS

    logging.getLogger("lcd.fetch").info(f"edit shard {shard}: fetch cache {STATS['fetched']} objects fetched "
                                        f"({STATS['bytes']:,} bytes), {STATS['hits']} hits")


@task(cache_policy=NO_CACHE)
def shards_to_run(out_root: str, num_shards: int, params_path: str, edit: EditConfig | None, engine: Engine,
                  concepts_root: str | None, masks_store: str | None = None) -> list[int]:
    """The shards with work left, in order. Every other shard finished last time and nothing it
    depends on changed (lcd.jobs.editing.current_report: the shard's ledger and deps tables,
    object metadata and one listing of edits/; no input, store, concept or weights read): its
    tables are written here as the shard itself would write them (all items skipped), and no
    run is started for it. A resume of a finished job starts no shard process at all."""
    params = load_params(params_path)
    listing = output_listing(out_root)
    todo = []
    for i in range(num_shards):
        name = tables.shard_name(i, num_shards)
        report = current_report(read_shard_plan(out_root, i, num_shards), out_root=out_root, cfg=edit or params.edit,
                                models=params.models, shard=name, listing=listing, engine=engine,
                                concepts_root=concepts_root, masks_store=masks_store, masks_cfg=params.masks,
                                io_cfg=params.io)
        if report is None:
            todo.append(i)
            continue
        tables.write_shard_tables(out_root, name, report.results, [])
    return todo


@task(cache_policy=NO_CACHE)
def merge_shard_tables(out_root: str, num_shards: int) -> dict:
    """Shard tables (+ the manifest's own failures) -> results.parquet, failures.parquet; every
    planned item and manifest failure accounted for: `missing` (ids with no row, first few),
    `n_missing`, `duplicated` (rows beyond one per id)."""
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.compute as pc

    def at(*parts: str):  # under out_root, a folder or a remote URL
        return storage.join(out_root, *parts)

    tdir = at("tables")
    tables.merge_tables(tables.shard_table_paths(tdir, "results", num_shards), tables.RESULTS_SCHEMA,
                        at("results.parquet"))
    fail_paths = [at("tables", "failures-manifest.parquet")] + tables.shard_table_paths(tdir, "failures", num_shards)
    tables.merge_tables(fail_paths, tables.FAILURES_SCHEMA, at("failures.parquet"))
    manifest_fail = tables.read_table(at("tables", "failures-manifest.parquet"), columns=["id"])
    expected = pa.concat_arrays([plan_ids(out_root, num_shards),
                                 manifest_fail.column("id").combine_chunks().cast(pa.string())])
    res = tables.read_table(at("results.parquet"), columns=["id", "status", "shard", "seconds"])
    acc = tables.merged_accounting(res, tables.read_table(at("failures.parquet"), columns=["id", "shard"]), expected)
    summary = {"items": acc["edited"] + acc["skipped"] + acc["failed"], "edited": acc["edited"],
               "skipped": acc["skipped"], "failed": acc["failed"]}
    write_text_atomic(at("summary.json"), json.dumps(summary, indent=1, sort_keys=True))  # DVC metrics
    secs = res.filter(pc.equal(res.column("status"), "edited")).select(["id", "seconds"]).rename_columns(["item", "seconds"])
    with atomic_path(at("edit_seconds.csv")) as tmp:
        pcsv.write_csv(secs, tmp, pcsv.WriteOptions(quoting_style="none"))
    per_item = secs.column("seconds").to_pylist()
    save_png(at("edit_seconds.png"), line_chart({"edited": (list(range(len(per_item))), per_item)},
                                                "seconds per edited item (its batch's model time / items)",
                                                "item (results order)", "s"))  # offline-safe twin of the CSV
    return acc


@task(cache_policy=NO_CACHE)
def publish_artifacts(manifest: str, out_root: str, counts: dict, states: list[str], max_rows: int,
                      masks_store: str | None = None) -> str:
    """A summary table and a before | mask | after contact sheet (PNG, embedded in a markdown artifact)
    of `max_rows` results spread evenly over the run; only those rows' items are read from the plan."""
    create_table_artifact(table=[{"status": k, "items": counts[k]} for k in ("edited", "skipped", "failed")]
                          + [{"status": f"shard {tables.shard_name(i, len(states))} ({st})",
                              "items": counts["per_shard"].get(tables.shard_name(i, len(states)), 0)}
                             for i, st in enumerate(states)],
                          key="edit-batch-summary", description=f"edit-batch {manifest} -> {out_root}")
    results = tables.sample_rows(storage.join(out_root, "results.parquet"), max_rows, ["id", "output", "prompt"])
    failures = tables.sample_rows(storage.join(out_root, "failures.parquet"), max(1, max_rows // 2),
                                  ["id", "stage", "message"]) if counts["failed"] else []
    items = plan_items(out_root, len(states), [r["id"] for r in results + failures])
    if not results and not failures:
        return ""
    triples, problems = result_triples(items, results, out_root, masks_store)
    for p in problems:
        get_run_logger().warning(p)
    labels, failed = sheet_labels(results, failures)
    sheet = contact_sheet(triples + failure_triples(items, failures), labels=labels, failed=failed)
    sheet_path = save_png(storage.join(out_root, "contact_sheet.png"), sheet)
    md = (f"# edit-batch contact sheet\n\nbefore | mask | after, {len(results)} items sampled evenly, "
          f"then {len(failures)} of {counts['failed']} failures (red); "
          f"full size at `{sheet_path if storage.is_remote(sheet_path) else sheet_path.resolve()}`\n\n"
          f"![contact sheet](data:image/png;base64,{base64.b64encode(storage.read_bytes(sheet_path)).decode()})\n")
    create_markdown_artifact(md, key="edit-batch-contact-sheet")
    return str(sheet_path)


@task(cache_policy=NO_CACHE)
def plan_manifest(manifest: str, out_root: str, num_shards: int, replan: bool = False) -> dict:
    """Read the manifest once into one plan file per shard (lcd.jobs.plan); bad entries ->
    tables/failures-manifest.parquet; -> the plan's counts. An out_root planned for another
    manifest file is refused unless `replan`."""
    from dataclasses import asdict

    return asdict(write_plan(manifest, out_root, num_shards, replan=replan))
