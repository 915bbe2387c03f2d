"""Edit one shard of a manifest: skip finished items, edit the rest in batches, record everything.

Resumability rests on one rule: an item's output `<out>/edits/<id>.png` carries, in its PNG
metadata, the `input_hash` of everything that determines it (input bytes, region -- for a
`sam:` rule the stored masks it reads, and CLIP's weights for `sam:text:` --, concept weights,
prompt, seed, edit config, model pin). An item whose output exists with the same hash is
skipped; any change to any of those re-runs it. Outputs are written atomically after each batch,
so a worker killed mid-shard loses at most the batch in flight, and a re-run finds the rest.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Literal

import numpy as np

from lcd.config import EditConfig, ModelsConfig
from lcd.errors import InputImageError, LcdError
from lcd.io.images import check_mask_fits, load_image, load_mask, read_png_meta, save_png
from lcd.jobs.manifest import ManifestItem, select_region
from lcd.masks.config import MasksConfig
from lcd.models.sources import local_source, sha256_file, sha256_tree

if TYPE_CHECKING:
    from lcd.masks.store import MaskStore

Engine = Literal["diffusion", "noop"]
EDITS_DIR = "edits"
REGIONS_DIR = "regions"  # the region each edit used, as resolved at edit time (8-bit PNG, 255 = edited)
SAM_PREFIX = "sam:"  # manifest regions resolved on the masks stage's store


@dataclass
class ShardReport:
    """Rows for the results / failures tables (schemas in lcd.jobs.tables)."""

    results: list[dict] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        c = {"edited": 0, "skipped": 0, "failed": len(self.failures)}
        for r in self.results:
            c[r["status"]] += 1
        return c


def model_pin(ref: str, revision: str | None) -> str:
    """Content hash of local weights, or `ref@revision` for a hub id (resolved at load time)."""
    p = Path(ref)
    return local_source(p).sha256 if p.exists() else f"{ref}@{revision or 'main'}"


def config_fingerprint(cfg: EditConfig, models: ModelsConfig, engine: Engine) -> str:
    """Hash of everything shared by the items of a run that changes an output."""
    pin = "noop" if engine == "noop" else model_pin(models.sd, models.sd_revision)
    payload = {"edit": cfg.model_dump(), "model": pin, "dtype": models.dtype, "engine": engine}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def concept_path(concept: str | None, concepts_root: str | Path | None) -> Path | None:
    """A concept name -> `<concepts_root>/<name>`; a value with a slash is a folder path."""
    if concept is None:
        return None
    if "/" in concept or concepts_root is None:
        return Path(concept)
    return Path(concepts_root) / concept


def is_text_rule(select: str | None) -> bool:
    """True for `sam:text:...` regions, which need a CLIP model to resolve."""
    return bool(select) and select.strip().startswith(SAM_PREFIX + "text:")


def uses_sam(item: ManifestItem) -> bool:
    """True when the item's region is a `sam:` rule on the masks store."""
    return item.mask is None and item.select.strip().startswith(SAM_PREFIX)


def needs_text_clip(item: ManifestItem) -> bool:
    return item.mask is None and is_text_rule(item.select)


def _require_store(item: ManifestItem, rule: str, masks_store):
    if masks_store is None:
        raise InputImageError(f"{item.id}: region {rule!r} needs the masks store (edit masks_store / outputs/masks)",
                              item=item.id)
    return masks_store


def region_fingerprint(item: ManifestItem, masks_store: "str | Path | MaskStore | None", clip_pin: str | None,
                       masks_cfg: MasksConfig | None = None) -> object:
    """What the item's region depends on: the rule and, for `sam:` rules, the stored masks of the
    image, the post-processing (masks.fill_holes / dilate_px) and, for `sam:text:`, the CLIP
    weights and crop margin. Raises InputImageError naming the item when the store is missing or
    has no masks for the image."""
    rule = item.select.strip()
    if not rule.startswith(SAM_PREFIX):
        return rule
    from lcd.masks.read import stored_masks_digest

    try:
        digest = stored_masks_digest(_require_store(item, rule, masks_store), Path(item.image).stem)
    except LcdError as e:
        raise InputImageError(f"{item.id}: {e}", item=item.id) from None
    m = masks_cfg or MasksConfig()
    text = is_text_rule(rule)
    return {"rule": rule, "masks": digest, "fill": m.fill_holes, "dilate": m.dilate_px,
            "clip": clip_pin if text else None, "text_margin": m.text_crop_margin if text else None}


def item_hash(item: ManifestItem, config_fp: str, concept_dir: Path | None,
              masks_store: "str | Path | MaskStore | None" = None, clip_pin: str | None = None,
              masks_cfg: MasksConfig | None = None, tree_hashes: dict[Path, str] | None = None) -> str:
    """sha256 over the item's input bytes and fields; raises InputImageError naming a missing file.
    `tree_hashes` memoises concept-folder hashes across the items of one shard: a concept's
    weights (and its checkpoints) are read once per shard, not once per item."""
    def file_hash(p: str) -> str:
        try:
            return sha256_file(p)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise InputImageError(f"{p}: file not found", item=p) from None

    if concept_dir is not None and not concept_dir.is_dir():
        raise LcdError(f"concept {item.concept!r}: weights folder {concept_dir} not found (train it first)",
                       item=str(concept_dir))
    concept_sha = None
    if concept_dir is not None:
        memo = tree_hashes if tree_hashes is not None else {}
        if concept_dir not in memo:
            memo[concept_dir] = sha256_tree(concept_dir)
        concept_sha = memo[concept_dir]
    payload = {
        "image": file_hash(item.image),
        "region": file_hash(item.mask) if item.mask else region_fingerprint(item, masks_store, clip_pin, masks_cfg),
        "concept": concept_sha,
        "prompt": item.prompt,
        "seed": item.seed,
        "config": config_fp,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def output_path(out_root: str | Path, item_id: str) -> Path:
    return Path(out_root) / EDITS_DIR / f"{item_id}.png"


def region_path(out_root: str | Path, item_id: str) -> Path:
    """Where the resolved region of an item is kept: a `sam:text:` pick or a `box:` is visible and
    auditable later without the masks store or CLIP."""
    return Path(out_root) / REGIONS_DIR / f"{item_id}.png"


def is_current(path: Path, input_hash: str) -> bool:
    """True when `path` exists and was made from exactly these inputs."""
    if not path.exists():
        return False
    try:
        return read_png_meta(path).get("input_hash") == input_hash
    except Exception:  # unreadable / foreign file: redo it
        return False


def load_region(item: ManifestItem, image: np.ndarray, masks_store: "str | Path | MaskStore | None" = None,
                clip=None, masks_cfg: MasksConfig | None = None) -> np.ndarray:
    """(H, W) bool region of `item`: its mask file, a `box:` rectangle, or `sam:<selection>`
    (largest | best | id:N | point:X,Y | box:... | text:WORDS) among the masks the masks stage
    stored for the image (image_id = file stem) in `masks_store`, holes filled and dilated per
    `masks_cfg` exactly as `lcd edit --masks` does; checked against the image."""
    if item.mask is not None:
        mask = load_mask(item.mask)
        check_mask_fits(image, mask, item.image, item.mask)
        return mask
    rule = item.select.strip()
    if not rule.startswith(SAM_PREFIX):
        return select_region(rule, image.shape[:2], item.id)
    from lcd.masks.read import select_region_mask

    try:
        mask = select_region_mask(_require_store(item, rule, masks_store), Path(item.image).stem,
                                  rule[len(SAM_PREFIX):], masks_cfg or MasksConfig(), clip=clip, image=image)
    except LcdError as e:
        raise InputImageError(f"{item.id}: {e}", item=item.id) from None
    check_mask_fits(image, mask, item.image, f"{masks_store}:{rule}")
    return mask


def _failure(item_id: str, stage: str, err: Exception, shard: str) -> dict:
    return {"id": item_id, "item": getattr(err, "item", None) or item_id, "stage": stage,
            "error": type(err).__name__, "message": str(err), "shard": shard}


PipelineLoader = Callable[[Path | None], tuple[object, list[str]]]


def default_loader(models: ModelsConfig) -> PipelineLoader:
    """-> loader(concept_dir) giving (LoadedPipeline, the concept's tokens). Base model without a concept."""
    def load(concept_dir: Path | None):
        from lcd.models.loader import load_sd_pipeline

        lp = load_sd_pipeline(models.sd, revision=models.sd_revision, dtype=models.dtype, device=models.device,
                              single_file_config=models.sd_single_file_config)
        if concept_dir is None:
            return lp, []
        from lcd.concepts.io import apply_concepts, load_concept

        concept = load_concept(concept_dir)
        apply_concepts(lp.pipe, [concept])
        return lp, list(concept.tokens)
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
) -> ShardReport:
    """Edit `items` into `<out_root>/edits/`; one bad item becomes a failure row, never an exception."""
    from lcd.edit.engine import EditItem, EditResult, check_item, edit_images, known_concept_tokens

    report = ShardReport()
    # 1. hash every item against the run's config; keep the ones whose output is missing or stale
    config_fp = config_fingerprint(cfg, models, engine)
    masks_store = _open_masks_store(masks_store, items)
    clip_pin = model_pin(models.clip, None) if any(map(needs_text_clip, items)) else None
    tree_hashes: dict[Path, str] = {}
    pending: list[tuple[ManifestItem, str, Path | None]] = []
    for it in items:
        try:
            cdir = concept_path(it.concept, concepts_root)
            h = item_hash(it, config_fp, cdir, masks_store, clip_pin, masks_cfg, tree_hashes)
        except LcdError as e:
            report.failures.append(_failure(it.id, "input", e, shard))
            continue
        out = output_path(out_root, it.id)
        if is_current(out, h):
            report.results.append(_row(it, out, h, "skipped", shard, 0.0))
        else:
            pending.append((it, h, cdir))
    # 2. one model load per concept group (a concept changes the text encoder and the UNet);
    # CLIP only when a pending item selects its SAM region by text
    loader = loader or default_loader(models)
    clip = _load_text_clip(models, pending, report, shard)
    pending.sort(key=lambda p: str(p[2] or ""))
    for cdir, group in groupby(pending, key=lambda p: p[2]):
        group = list(group)
        lp, tokens = None, []
        if engine == "diffusion":
            try:
                lp, tokens = loader(cdir)
            except LcdError as e:
                report.failures.extend(_failure(it.id, "concept", e, shard) for it, _, _ in group)
                continue
        known = known_concept_tokens(lp.pipe.tokenizer) if lp is not None else []
        # 3. batches: read inputs, validate per item, edit the valid ones, save atomically
        for start in range(0, len(group), cfg.batch_size):
            t0 = time.perf_counter()
            batch, edit_items = [], []
            for it, h, _ in group[start : start + cfg.batch_size]:
                try:
                    image = load_image(it.image)
                    ei = EditItem(image, load_region(it, image, masks_store, clip, masks_cfg), it.prompt, it.seed, it.id)
                    if lp is not None:
                        check_item(ei, known, tokens)
                except LcdError as e:
                    report.failures.append(_failure(it.id, "input", e, shard))
                    continue
                batch.append((it, h))
                edit_items.append(ei)
            if not batch:
                continue
            try:
                if lp is None:
                    results = [EditResult(ei.image, ei.mask.astype(np.float32), {"engine": "noop"}) for ei in edit_items]
                else:
                    results = edit_images(lp, edit_items, cfg)
            except Exception as e:  # a batch-level failure (e.g. out of memory) fails its items, not the shard
                report.failures.extend(_failure(it.id, "edit", e, shard) for it, _ in batch)
                continue
            per_item = (time.perf_counter() - t0) / len(batch)
            for (it, h), ei, res in zip(batch, edit_items, results):
                out = output_path(out_root, it.id)
                meta = res.meta | {"id": it.id, "image": it.image, "region": it.mask or it.select,
                                   "concept": it.concept, "input_hash": h}
                # region first: the output is what marks the item done
                save_png(region_path(out_root, it.id), ei.mask.astype(np.uint8) * 255,
                         {"id": it.id, "region": it.mask or it.select, "input_hash": h})
                save_png(out, res.image, meta)
                report.results.append(_row(it, out, h, "edited", shard, per_item))
    return report


def _open_masks_store(masks_store, items: list[ManifestItem]):
    """The masks store opened once for the shard's `sam:` items (a lookup then reads one part,
    not every part's footer). A path that does not exist becomes None, so each `sam:` item fails
    saying it needs the store; a store that cannot be opened stays a path, so each item that
    needs it fails with the store's own message."""
    from lcd.masks.store import MaskStore, open_store

    if masks_store is None or isinstance(masks_store, MaskStore):
        return masks_store
    if not Path(masks_store).exists():
        return None
    if not any(map(uses_sam, items)):
        return masks_store
    try:
        return open_store(masks_store)
    except LcdError:
        return masks_store


def _load_text_clip(models: ModelsConfig, pending: list, report: ShardReport, shard: str):
    """(CLIPModel, CLIPProcessor) when some pending item has a `sam:text:` region, else None. A
    CLIP that fails to load fails those items (named), not the shard."""
    if not any(needs_text_clip(it) for it, _, _ in pending):
        return None
    from lcd.models.loader import load_clip

    try:
        model, processor, _ = load_clip(models.clip, device=models.device)
    except LcdError as e:
        failed = {it.id for it, _, _ in pending if needs_text_clip(it)}
        report.failures.extend(_failure(i, "input", e, shard) for i in sorted(failed))
        pending[:] = [p for p in pending if p[0].id not in failed]
        return None
    return model, processor


def _row(it: ManifestItem, out: Path, h: str, status: str, shard: str, seconds: float) -> dict:
    return {"id": it.id, "image": it.image, "region": it.mask or it.select, "concept": it.concept,
            "prompt": it.prompt, "seed": it.seed, "output": str(out), "input_hash": h, "status": status,
            "shard": shard, "seconds": seconds}
