"""Edit-batch tasks: edit one shard, merge the shard tables, publish the run's artifacts."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from lcd.config import EditConfig, load_params
from lcd.io.atomic import write_text_atomic
from lcd.io.images import save_png
from lcd.jobs import tables
from lcd.jobs.contact import contact_sheet, result_triples
from lcd.jobs.editing import Engine, run_edit_shard
from lcd.jobs.manifest import read_manifest, shard_items


@task(cache_policy=NO_CACHE)  # loads a model; results live on disk, Prefect must not cache them
def edit_shard(manifest: str, out_root: str, shard_index: int, num_shards: int, params_path: str,
               edit: EditConfig | None, engine: Engine, concepts_root: str | None,
               masks_store: str | None = None) -> dict:
    """Edit shard `shard_index` of `num_shards`; write its results/failures tables; -> counts."""
    params = load_params(params_path)
    items, _ = read_manifest(manifest)  # manifest failures are the coordinator's to record
    name = tables.shard_name(shard_index, num_shards)
    report = run_edit_shard(shard_items(items, num_shards, shard_index), out_root=out_root,
                            cfg=edit or params.edit, models=params.models, shard=name,
                            engine=engine, concepts_root=concepts_root,
                            masks_store=masks_store,
                            masks_cfg=params.masks)
    tdir = Path(out_root) / "tables"
    tables.write_table(tdir / f"results-{name}.parquet", report.results, tables.RESULTS_SCHEMA)
    tables.write_table(tdir / f"failures-{name}.parquet", report.failures, tables.FAILURES_SCHEMA)
    return {"shard": name, **report.counts()}


@task(cache_policy=NO_CACHE)
def merge_shard_tables(out_root: str, num_shards: int) -> dict:
    """Shard tables (+ the manifest's own failures) -> results.parquet, failures.parquet."""
    out, tdir = Path(out_root), Path(out_root) / "tables"
    res = tables.merge_tables(tables.shard_table_paths(tdir, "results", num_shards),
                              tables.RESULTS_SCHEMA, out / "results.parquet")
    fail_paths = [tdir / "failures-manifest.parquet"] + tables.shard_table_paths(tdir, "failures", num_shards)
    fail = tables.merge_tables(fail_paths, tables.FAILURES_SCHEMA, out / "failures.parquet")
    status = res.column("status").to_pylist()
    per_shard: dict[str, int] = {}
    for s in res.column("shard").to_pylist() + fail.column("shard").to_pylist():
        per_shard[s] = per_shard.get(s, 0) + 1
    summary = {"items": res.num_rows + fail.num_rows, "edited": status.count("edited"),
               "skipped": status.count("skipped"), "failed": fail.num_rows}
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=1, sort_keys=True))  # DVC metrics
    secs = [(r["id"], r["seconds"]) for r in res.to_pylist() if r["status"] == "edited"]
    write_text_atomic(out / "edit_seconds.csv", "item,seconds\n" + "".join(f"{i},{s:.4f}\n" for i, s in secs))
    return {"edited": status.count("edited"), "skipped": status.count("skipped"), "failed": fail.num_rows,
            "per_shard": per_shard, "ids": res.column("id").to_pylist() + fail.column("id").to_pylist()}


@task(cache_policy=NO_CACHE)
def publish_artifacts(manifest: str, out_root: str, counts: dict, states: list[str], max_rows: int,
                      masks_store: str | None = None) -> str:
    """A summary table and a before | mask | after contact sheet (PNG, embedded in a markdown artifact)."""
    create_table_artifact(table=[{"status": k, "items": counts[k]} for k in ("edited", "skipped", "failed")]
                          + [{"status": f"shard {tables.shard_name(i, len(states))} ({st})",
                              "items": counts["per_shard"].get(tables.shard_name(i, len(states)), 0)}
                             for i, st in enumerate(states)],
                          key="edit-batch-summary", description=f"edit-batch {manifest} -> {out_root}")
    results = tables.read_table(Path(out_root) / "results.parquet", tables.RESULTS_SCHEMA).to_pylist()[:max_rows]
    items = {it.id: it for it in read_manifest(manifest)[0]}
    if not results:
        return ""
    triples, problems = result_triples(items, results, out_root, masks_store)
    for p in problems:
        get_run_logger().warning(p)
    sheet_path = save_png(Path(out_root) / "contact_sheet.png", contact_sheet(triples))
    md = (f"# edit-batch contact sheet\n\nbefore | mask | after, first {len(results)} items; "
          f"full size at `{sheet_path.resolve()}`\n\n![contact sheet](data:image/png;base64,"
          f"{base64.b64encode(sheet_path.read_bytes()).decode()})\n")
    create_markdown_artifact(md, key="edit-batch-contact-sheet")
    return str(sheet_path)


@task(cache_policy=NO_CACHE)
def check_manifest(manifest: str, out_root: str) -> list[str]:
    """Validate the manifest up front: bad entries -> tables/failures-manifest.parquet; -> ids of good items."""
    items, failures = read_manifest(manifest)
    rows = [{"id": f.id, "item": manifest, "stage": "manifest", "error": "ManifestError", "message": f.message,
             "shard": "manifest"} for f in failures]
    tables.write_table(Path(out_root) / "tables" / "failures-manifest.parquet", rows, tables.FAILURES_SCHEMA)
    return [it.id for it in items] + [f.id for f in failures]
