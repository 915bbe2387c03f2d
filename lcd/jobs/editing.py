"""Edit one shard of a manifest: skip finished items, edit the rest in batches, record everything.

The shard loop runs in phases:
  1. hash every item (lcd.jobs.hashes) and skip those whose output is current (lcd.jobs.layout);
  2. load CLIP when a pending item selects its SAM region by text;
  3. per concept group, load the model once (lcd.models.pipeline.load_sd);
  4. per batch: read inputs and resolve regions (lcd.jobs.regions), validate, edit, and save
     atomically, the region first and the output last (the output marks the item done); with
     `edit.overlap` the next batch is read and the previous one written while the model runs.
A worker killed mid-shard loses at most the batch in flight, and a re-run finds the rest. One bad
item becomes a failure row, never an exception.
"""

from __future__ import annotations

import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from lcd.config import EditConfig, ModelsConfig
from lcd.errors import LcdError
from lcd.io import storage
from lcd.io.atomic import write_bytes_atomic
from lcd.io.config import IoConfig
from lcd.io.encode import SUFFIX
from lcd.io.hashing import hash_log, hash_rows, remember_hashes
from lcd.io.images import load_image, save_output, save_png
from lcd.jobs.currency import ShardReport, current_report, output_current, result_row
from lcd.jobs.deps import dep_rows, settings_digest, shard_deps
from lcd.jobs.hashes import Engine, concept_path, config_fingerprint, item_hash, model_pin, prefetch_remote_hashes
from lcd.jobs import tables
from lcd.jobs.layout import EDITS_DIR, REGIONS_DIR, output_name, output_path, output_stats, region_path
from lcd.jobs.manifest import ManifestItem
from lcd.jobs.regions import load_region, needs_text_clip, open_masks_store
from lcd.masks.config import MasksConfig
from lcd.progress import Progress

if TYPE_CHECKING:
    from lcd.edit.prompts import PromptCache
    from lcd.masks.store import MaskStore

__all__ = ["Engine", "ShardReport", "run_edit_shard", "current_report", "default_loader"]


@dataclass
class ShardContext:
    """What every phase of one shard needs."""

    out_root: str | Path  # a folder or a remote URL (lcd.io.storage)
    cfg: EditConfig
    models: ModelsConfig
    shard: str
    engine: Engine
    masks_store: "str | Path | MaskStore | None"
    masks_cfg: MasksConfig | None
    standin_batch_s: float = 0.0  # noop engine: seconds slept per batch, standing in for a GPU (benchmarks)
    report: ShardReport = field(default_factory=ShardReport)
    prompts: "PromptCache | None" = None  # text embeddings of the concept group being edited
    io_pool: "ThreadPoolExecutor | None" = None  # per-item reads/writes of a batch (edit.io_threads)
    progress: Progress | None = None  # lines per finished batch (lcd.progress)
    io: IoConfig | None = None  # deadlines and byte limit of inputs read by URL (None: IoConfig's defaults)

    def io_map(self, fn, seq: list) -> list:
        """`fn` over `seq` in the I/O pool (results in `seq`'s order, so tables do not depend on it)."""
        return list(self.io_pool.map(fn, seq)) if self.io_pool is not None and len(seq) > 1 else [fn(x) for x in seq]

    def failure(self, item_id: str, stage: str, err: Exception, about: str | None = None) -> dict:
        """A failure row; `about` names what failed when the error does not (a concept folder)."""
        item = getattr(err, "item", None) or about or item_id
        return {"id": item_id, "item": item, "stage": stage, "error": type(err).__name__,
                "message": failure_message(err, item), "shard": self.shard}

    def fail(self, item_id: str, stage: str, err: Exception, about: str | None = None) -> None:
        self.report.failures.append(self.failure(item_id, stage, err, about))


def failure_message(err: BaseException, about: str) -> str:
    """One line: an LcdError's or OSError's message (a full disk, a permission: foreseen; its
    lines joined); anything else, which validation did not foresee (one catch-all per item
    step), as '<about>: unexpected <Type>: <first line>'."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    if isinstance(err, (LcdError, OSError)):
        return " ".join(lines) or type(err).__name__
    first = lines[0][:300] if lines else ""
    return f"{about}: unexpected {type(err).__name__}{': ' + first if first else ''}"


Pending = tuple[ManifestItem, str, "Path | None"]  # item, input_hash, concept folder
URL_THREADS = 16  # inputs by URL hashed at once (waits on the network, not on CPUs)
PipelineLoader = Callable[[Path | None], tuple[object, list[str]]]


def default_loader(models: ModelsConfig, scheduler: str | None = None) -> PipelineLoader:
    """-> loader(concept_dir) giving (LoadedPipeline, the concept's tokens); no concept: the base model."""
    def load(concept_dir: Path | None):
        from lcd.models.pipeline import load_sd

        sd = load_sd(models, concepts=[concept_dir] if concept_dir is not None else [], scheduler=scheduler)
        return sd.lp, sd.tokens
    return load


def run_edit_shard(
    items: list[ManifestItem],
    *,
    out_root: str | Path,
    cfg: EditConfig,
    models: ModelsConfig,
    shard: str = "00000-of-00001",
    engine: Engine = "diffusion",
    concepts_root: str | Path | None = None,
    loader: PipelineLoader | None = None,
    masks_store: "str | Path | MaskStore | None" = None,
    masks_cfg: MasksConfig | None = None,
    standin_batch_s: float = 0.0,
    io_cfg: IoConfig | None = None,
) -> ShardReport:
    """Edit `items` into `<out_root>/edits/`; one bad item becomes a failure row, never an exception.
    `standin_batch_s`: with the noop engine, sleep that long per batch (a stand-in GPU for
    orchestration benchmarks, bench/scale.py). The report's `hashes` are the file hashes this
    run used (tables.HASHES_SCHEMA), for the caller to keep beside the shard's tables. Inputs by
    URL are read within `io_cfg` (params.yaml `io`): one that hangs or breaks fails that item only."""
    ctx = ShardContext(storage.normalize(out_root), cfg, models, shard, engine, open_masks_store(masks_store, items),
                       masks_cfg, standin_batch_s, io=io_cfg)
    ctx.report.deps = _stamp_deps(ctx, items, concepts_root, masks_store)
    with hash_log() as used:
        # 1. hash every item against the run's config; keep the ones whose output is missing or stale
        pending = _pending_items(ctx, items, concepts_root)
        if pending:  # from the first write on, the old ledger may be wrong about this shard's outputs
            storage.remove(tables.shard_table_path(ctx.out_root, "results", shard))
            _mark_running(ctx)
        # 2. CLIP only when a pending item selects its SAM region by text
        clip = _load_text_clip(ctx, pending)
        # 3. one model load per concept group (a concept changes the text encoder and the UNet)
        loader = loader or default_loader(models, cfg.scheduler)
        pending.sort(key=lambda p: str(p[2] or ""))
        ctx.progress = Progress(f"edit shard {shard}", len(pending), unit="items")

        for cdir, group in groupby(pending, key=lambda p: p[2]):
            group = list(group)
            lp, tokens = None, []
            if engine == "diffusion":
                try:
                    lp, tokens = loader(cdir)
                except Exception as e:  # noqa: BLE001 - LcdError from validation, anything else by its type
                    for it, _, _ in group:
                        ctx.fail(it.id, "concept", e, str(cdir) if cdir is not None else "base model")
                    ctx.progress.advance(len(group))
                    continue
            # 4. batches: read, resolve regions, validate, edit, save atomically (overlapped: lcd.edit.config);
            #    the text encoder runs once per distinct prompt of the group (its concepts fixed)
            try:
                ctx.prompts = _prompt_cache(lp)
                n = _batch_size(cfg, lp)
                _run_batches(ctx, [group[k : k + n] for k in range(0, len(group), n)], lp, tokens, clip)
            except Exception as e:  # noqa: BLE001 - the group's unrecorded items fail; the shard goes on
                _fail_unrecorded(ctx, group, e)
    ctx.report.hashes = hash_rows(used)
    c = ctx.report.counts()
    ctx.progress.close(f"{c['edited']} edited, {c['skipped']} current (skipped), {c['failed']} failed")
    return ctx.report


def _stamp_deps(ctx: ShardContext, items: list[ManifestItem], concepts_root, masks_store) -> list[dict]:
    """The deps table's rows (lcd.jobs.deps), stamped before anything is read: a dep that changes
    during the run reads changed at the next check."""
    deps = shard_deps(items, cfg=ctx.cfg, models=ctx.models, engine=ctx.engine, concepts_root=concepts_root,
                      masks_store=masks_store, masks_cfg=ctx.masks_cfg)
    return dep_rows(settings_digest(ctx.cfg, ctx.models, ctx.engine, ctx.masks_cfg), deps)


def _fail_unrecorded(ctx: ShardContext, group: list[Pending], err: Exception) -> None:
    """What escaped a concept group's batches (a bug, not a bad item: each item step catches its
    own) fails the group's items that have no row yet, so the shard's other groups go on."""
    done = {r["id"] for r in ctx.report.results} | {f["id"] for f in ctx.report.failures}
    left = [it for it, _, _ in group if it.id not in done]
    for it in left:
        ctx.fail(it.id, "edit", err)
    if ctx.progress is not None:
        ctx.progress.advance(len(left))


def _prompt_cache(lp) -> "PromptCache | None":
    """The group's text-embedding cache; None for the noop engine. Imported here, not at the top
    of every shard: lcd.edit.prompts imports torch (~1.3 s of CPU a process), which a shard with
    nothing pending (a resume) never needs."""
    if lp is None:
        return None
    from lcd.edit.prompts import PromptCache

    return PromptCache.of(lp.pipe)  # encodes as the model's family does (SDXL: both encoders, pooled)


def _batch_size(cfg: EditConfig, lp) -> int:
    """Items per batch: edit.batch_size, "auto" resolved on the loaded model's device (noop: 8)."""
    if lp is None:
        return cfg.batch_size if cfg.batch_size != "auto" else 8
    from lcd.edit.speed import resolve_batch_size

    return resolve_batch_size(lp, cfg)


def _pending_items(ctx: ShardContext, items: list[ManifestItem], concepts_root,
                   listing: "dict[str, storage.Entry] | None" = None, ledger: "dict[str, tables.LedgerRow] | None" = None,
                   stop_early: bool = False) -> list[Pending] | None:
    """Phase 1: items whose output is missing or was made from other inputs; current ones are
    recorded as skipped, unhashable ones (missing file, no stored masks) as failures.

    What is current comes from the shard's previous results table (the ledger: id -> input_hash
    and the output's size and stamp then) and a look at its outputs without opening them
    (`listing`: lstat or listing entries; a shard looks up its own items, _present_outputs): an
    item is current when its output is a regular file of non-zero size, unchanged since the
    ledger's row, and the row has its hash (lcd.jobs.currency.output_current). An output the ledger does not know
    (its shard was killed before writing the table) or that changed since (replaced, cut,
    touched) is checked by its own header, end and metadata; a symlink, a 0-byte file or an
    output that is gone is redone whatever the ledger says. Input hashes come from the shard's known-hashes
    table while a file's size and mtime (an object's ETag) are unchanged, so a resume reads no
    input bytes. `stop_early`: return None at the first item that is not current."""
    remember_hashes(tables.read_known_hashes(tables.shard_table_path(ctx.out_root, "hashes", ctx.shard)))
    config_fp = config_fingerprint(ctx.cfg, ctx.models, ctx.engine)
    if ledger is None:
        ledger = tables.read_ledger(tables.shard_table_path(ctx.out_root, "results", ctx.shard))
    if listing is None:
        listing = _present_outputs(ctx, items)
    clip_pin = model_pin(ctx.models.clip, None) if any(map(needs_text_clip, items)) else None
    tree_hashes: dict[Path, str] = {}
    # inputs by URL hashed all at once: a shard of hanging URLs waits about one deadline, not one each
    failed_urls = {} if stop_early else prefetch_remote_hashes(items, ctx.io, URL_THREADS)
    pending: list[Pending] = []
    for it in items:
        try:
            cdir = concept_path(it.concept, concepts_root)
            h = item_hash(it, config_fp, cdir, ctx.masks_store, clip_pin, ctx.masks_cfg, tree_hashes, limits=ctx.io,
                          failed_urls=failed_urls)
        except Exception as e:  # noqa: BLE001 - LcdError from validation, anything else by its type
            if stop_early:
                return None
            ctx.fail(it.id, "input", e)
            continue
        out = output_path(ctx.out_root, it.id, ctx.cfg.output_format)
        entry = listing.get(output_name(it.id, ctx.cfg.output_format))
        if output_current(out, h, entry, ledger.get(it.id)):
            ctx.report.results.append(result_row(it, out, h, "skipped", ctx.shard, 0.0, entry))
        elif stop_early:
            return None
        else:
            pending.append((it, h, cdir))
    return pending


def _present_outputs(ctx: ShardContext, items: list[ManifestItem]) -> "dict[str, storage.Entry]":
    """{output name: Entry} of the outputs of `items` that exist, looked up for these items only
    (a shard's cost stays flat however many outputs the job has); after a killed run of this
    shard (its running marker is there) edits/ and regions/ are listed once to remove the temp
    files it left."""
    names = [output_name(it.id, ctx.cfg.output_format) for it in items]
    marker = tables.running_marker_path(ctx.out_root, ctx.shard)
    if isinstance(ctx.out_root, Path) and marker.exists():
        _remove_stale_temps(ctx.out_root, storage.list_names(ctx.out_root / EDITS_DIR), {it.id for it in items})
    return output_stats(ctx.out_root, names)


def _mark_running(ctx: ShardContext) -> None:
    """Before the shard's first write to a local out_root: its running marker, which its tables
    remove (tables.write_shard_tables); a kill leaves it for the next run to find."""
    if isinstance(ctx.out_root, Path):
        write_bytes_atomic(tables.running_marker_path(ctx.out_root, ctx.shard), b"")


def _remove_stale_temps(out_root: Path, listing: set[str], ids: set[str]) -> None:
    """Delete temp files (`.<id>.png.<random>.tmp`, `.webp.` alike; lcd.io.atomic) that a killed run of this
    shard left in edits/ and regions/. Only this shard's ids: another shard may be writing its own.
    Remote out_roots stage temps locally, so there is nothing to clean there."""
    for folder, names in ((out_root / EDITS_DIR, listing), (out_root / REGIONS_DIR, None)):
        if names is None:
            names = storage.list_names(folder)
        for name in names:
            if name.startswith(".") and name.endswith(".tmp") and _TEMP.sub("", name[1:]) in ids:
                (folder / name).unlink(missing_ok=True)


# what atomic_path appends to `<id><suffix>`, for every output suffix (lcd.io.encode.SUFFIX)
_TEMP = re.compile(rf"({'|'.join(re.escape(s) for s in SUFFIX.values())})\.[^.]*\.tmp$")


def _load_text_clip(ctx: ShardContext, pending: list[Pending]):
    """Phase 2: (CLIPModel, CLIPProcessor) when some pending item has a `sam:text:` region, else
    None. A CLIP that fails to load fails those items (named), not the shard."""
    if not any(needs_text_clip(it) for it, _, _ in pending):
        return None
    from lcd.models.loader import load_clip

    try:
        model, processor, _ = load_clip(ctx.models.clip, device=ctx.models.device)
    except Exception as e:  # noqa: BLE001 - those items fail, by the error's type
        failed = {it.id for it, _, _ in pending if needs_text_clip(it)}
        for i in sorted(failed):
            ctx.fail(i, "input", e)
        pending[:] = [p for p in pending if p[0].id not in failed]
        return None
    return model, processor


Ready = tuple[ManifestItem, str, "object", "object"]  # item, input_hash, EditItem, Prepared (None: noop)
Outcome = tuple[list[dict], list[dict]]  # result rows, failure rows (in item order)


def _read_batch(ctx: ShardContext, batch: list[Pending], lp, tokens: list[str], clip) -> tuple[list[Ready], list[dict]]:
    """Read, decode, validate and prepare (feathered alpha, crop, resize) one batch: the CPU work
    before the model, run ahead of it when overlapping. Items that cannot be read or validated
    fail alone."""
    from lcd.edit.items import EditItem

    if lp is not None:  # the model stack (torch) only when there is a model: the noop engine never needs it
        from lcd.edit.engine import check_item, known_concept_tokens, prepare_item

        known = known_concept_tokens(lp.pipe.tokenizer)

    def read_one(p: Pending) -> tuple[Ready | None, dict | None]:
        it, h, _ = p
        try:
            image = load_image(it.image, int(ctx.cfg.max_image_mp * 1e6), limits=ctx.io)
            ei = EditItem(image, load_region(it, image, ctx.masks_store, clip, ctx.masks_cfg, limits=ctx.io), it.prompt, it.seed, it.id)
            if lp is not None:
                check_item(ei, known, tokens)
            prep = prepare_item(ei, ctx.cfg) if lp is not None else None
        except Exception as e:  # noqa: BLE001 - LcdError from validation, anything else by its type
            return None, ctx.failure(it.id, "input", e)
        return (it, h, ei, prep), None

    done = ctx.io_map(read_one, batch)
    return [r for r, _ in done if r is not None], [f for _, f in done if f is not None]


def _edit_ready(ctx: ShardContext, ready: list[Ready], lp) -> tuple[list | None, list[dict], float]:
    """The model on one batch (the GPU part) -> (generated crops, or the noop engine's results;
    failures; seconds per item). An exception in the edit itself (e.g. out of memory) fails the
    batch's items, not the shard."""
    from lcd.edit.items import EditResult

    t0 = time.perf_counter()
    try:
        if lp is None:
            time.sleep(ctx.standin_batch_s)
            out = [EditResult(ei.image, ei.mask.astype(np.float32), {"engine": "noop"}) for _, _, ei, _ in ready]
        else:
            from lcd.edit.engine import check_size, run_prepared

            check_size(ctx.cfg.size, lp.latent_factor)
            out = run_prepared(lp, [p for *_, p in ready], ctx.cfg, ctx.prompts)
    except Exception as e:  # noqa: BLE001 - recorded per item, with its type and message
        return None, [ctx.failure(it.id, "edit", e) for it, *_ in ready], 0.0
    return out, [], (time.perf_counter() - t0) / max(len(ready), 1)


def _save_batch(ctx: ShardContext, ready: list[Ready], outs: list, seconds: float, lp) -> Outcome:
    """Paste each crop back at full size and write regions and outputs: the CPU work after the
    model, run behind it when overlapping."""
    if lp is not None:
        from lcd.edit.engine import finish_item

    def save_one(pair) -> tuple[dict | None, dict | None]:
        (it, h, ei, prep), out = pair
        try:
            res = finish_item(lp, prep, out, ctx.cfg) if lp is not None else out
        except Exception as e:  # noqa: BLE001 - this item fails, the batch goes on
            return None, ctx.failure(it.id, "edit", e)
        try:
            return _save(ctx, it, h, ei, res, seconds)
        except Exception as e:  # noqa: BLE001 - _save records OSError itself; anything else, by its type
            return None, ctx.failure(it.id, "write", e)

    done = ctx.io_map(save_one, list(zip(ready, outs)))
    return [r for r, _ in done if r is not None], [f for _, f in done if f is not None]


def _run_batches(ctx: ShardContext, batches: list[list[Pending]], lp, tokens: list[str], clip) -> None:
    """Phase 4 over one concept group. With `cfg.overlap`, batch k+1 is read and batch k-1 written
    in two worker threads while the model runs batch k (at most three batches in memory); rows
    are recorded in the same order as without overlap, so tables and outputs are identical.
    Within a batch, items are read and written by `cfg.io_threads` threads (decoding and zlib
    release the GIL, so 12 MP photos use every core)."""
    n_io = ctx.cfg.io_threads or min(8, os.cpu_count() or 1)
    if n_io > 1 and ctx.io_pool is None:
        with ThreadPoolExecutor(n_io, thread_name_prefix="lcd-io") as pool:
            ctx.io_pool = pool
            try:
                return _run_batches(ctx, batches, lp, tokens, clip)
            finally:
                ctx.io_pool = None

    def record(outcome: Outcome) -> None:
        ctx.report.results.extend(outcome[0])
        ctx.report.failures.extend(outcome[1])

    def batch_done(batch: list) -> None:  # its model work is over (with overlap, its writes follow)
        if ctx.progress is not None:
            ctx.progress.advance(len(batch))

    if not ctx.cfg.overlap:
        for batch in batches:
            ready, fails = _read_batch(ctx, batch, lp, tokens, clip)
            ctx.report.failures.extend(fails)
            results, fails, secs = _edit_ready(ctx, ready, lp) if ready else ([], [], 0.0)
            ctx.report.failures.extend(fails)
            record(_save_batch(ctx, ready, results, secs, lp) if results else ([], []))
            batch_done(batch)
        return
    with ThreadPoolExecutor(1, thread_name_prefix="lcd-read") as reader, \
            ThreadPoolExecutor(1, thread_name_prefix="lcd-write") as writer:
        nxt = reader.submit(_read_batch, ctx, batches[0], lp, tokens, clip) if batches else None
        writing = None
        for k in range(len(batches)):
            ready, read_fails = nxt.result()
            nxt = reader.submit(_read_batch, ctx, batches[k + 1], lp, tokens, clip) if k + 1 < len(batches) else None
            results, edit_fails, secs = _edit_ready(ctx, ready, lp) if ready else ([], [], 0.0)
            if writing is not None:
                record(writing.result())  # batch k-1's rows before batch k's failures, as sequentially
            ctx.report.failures.extend(read_fails + edit_fails)
            writing = writer.submit(_save_batch, ctx, ready, results, secs, lp) if results else None
            batch_done(batches[k])
        if writing is not None:
            record(writing.result())


def _save(ctx: ShardContext, it: ManifestItem, h: str, ei, res, seconds: float) -> tuple[dict | None, dict | None]:
    """The region first, the output last: the output is what marks the item done. -> (row, None)
    or (None, failure): a write that fails (disk full, permissions) fails this item only."""
    out = output_path(ctx.out_root, it.id, ctx.cfg.output_format)
    meta = res.meta | {"id": it.id, "image": it.image, "region": it.mask or it.select, "concept": it.concept,
                       "input_hash": h}
    level = ctx.cfg.png_compress_level
    try:
        # the region as a 1-bit PNG: an eighth of the bytes to filter and deflate of an 8-bit mask
        save_png(region_path(ctx.out_root, it.id), np.ascontiguousarray(ei.mask, dtype=bool),
                 {"id": it.id, "region": it.mask or it.select, "input_hash": h}, compress_level=level)
        save_output(out, res.image, meta, ctx.cfg.output_format, level, ctx.cfg.webp_method)
    except OSError as e:
        return None, ctx.failure(it.id, "write", e)
    try:  # the output as written (an lstat; a HEAD on object storage): the next run trusts this row while it holds
        entry = storage.stat_entry(out)
    except OSError:  # no entry: the next run checks the file itself
        entry = None
    return result_row(it, out, h, "edited", ctx.shard, seconds, entry), None
