"""Bulk masks: every image of a manifest -> SAM masks in Parquet parts, failures on the side.

One bad image (missing, corrupt, not an image, bad prompt) is recorded in the failures table and
the batch goes on. Each finished image is stored at once (a one-image checkpoint part), and every
`images_per_part` images the checkpoints are merged into one part, so a kill loses at most the
image in flight, and a re-run skips what is stored.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from lcd.errors import LcdError
from lcd.io.config import IoConfig
from lcd.masks.config import MasksConfig
from lcd.masks.manifest import ManifestItem, decode_image, fetch_bytes, parse_prompts_json, sha256_bytes
from lcd.masks.predict import MaskPredictor, MaskRecord, parse_prompt
from lcd.masks.store import done_images, image_rows, read_failures, settings_key, write_failures, write_part
from lcd.progress import Progress


@dataclass
class MasksSummary:
    done: int = 0
    skipped: int = 0
    failed: int = 0
    recomputed: int = 0  # of `done`: images stored before under other settings, prompts or weights
    masks: int = 0
    encoder_passes: int = 0
    parts: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def text_records(image: np.ndarray, records: list[MaskRecord], prompts, clip, cfg: MasksConfig) -> list[MaskRecord]:
    """For each text prompt, copy the CLIP-best of the image's other masks as a `text` mask."""
    from lcd.masks.select import select_by_text

    out = []
    candidates = [r for r in records if r.source != "text"]
    for i, pr in enumerate(prompts):
        if pr.text is None:
            continue
        if not candidates:
            raise LcdError(f"text prompt {pr.text!r}: no point/box/automatic masks to choose from "
                           "(enable masks.automatic or add point/box prompts)", item=pr.text)
        k, score = select_by_text(image, np.stack([r.mask for r in candidates]), [r.bbox for r in candidates],
                                  pr.text, clip, cfg.text_crop_margin)
        best = candidates[k]
        out.append(MaskRecord(best.mask, "text", best.predicted_iou, best.stability_score, pr, i))
    return out


CHECKPOINT_CODEC, CHECKPOINT_LEVEL = "zstd", 1  # short-lived one-image parts: write fast


@dataclass
class _PartBuffer:
    """Rows of the images computed since the last part was written (lcd.masks.store layout).

    Each finished image is stored at once as a one-image checkpoint part (fast zstd), so a kill
    loses only the image in flight; every `images_per_part` images (and at the end) the buffered
    images are written again as one part at the configured codec, and their checkpoints removed.
    The part comes after its checkpoints, so a kill between the two leaves the same rows twice,
    and readers take the newest (the part)."""

    out: Path
    cfg: MasksConfig
    summary: MasksSummary
    failed_before: set[str] = field(default_factory=set)  # ids with a row in failures.parquet
    rows: list[dict] = field(default_factory=list)
    images: list[dict] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)
    attempted: list[str] = field(default_factory=list)
    checkpoints: list[Path] = field(default_factory=list)
    stored_rows: int = 0  # rows[:stored_rows] are in checkpoints already

    def store_image(self) -> None:
        """After an image is buffered: a part when the buffer is full, else its checkpoint."""
        c = self.cfg
        if len(self.images) >= c.images_per_part:
            self.flush()
            return
        self.checkpoints.append(write_part(self.out, self.rows[self.stored_rows:], self.images[-1:], c.model_dump(),
                                           c.row_group_rows, CHECKPOINT_CODEC, CHECKPOINT_LEVEL))
        self.stored_rows = len(self.rows)
        if self.failed_before.intersection(self.attempted):  # a stored image must not stay listed as failed
            self._write_failures()

    def flush(self) -> None:
        """Write the buffered images as one part (atomically), drop their checkpoints, and write
        the failures seen with them."""
        c = self.cfg
        if self.images:
            self.summary.parts.append(str(write_part(self.out, self.rows, self.images, c.model_dump(),
                                                     c.row_group_rows, c.parquet_codec, c.parquet_level)))
        for p in self.checkpoints:
            p.unlink(missing_ok=True)
        if self.attempted:
            self._write_failures()
        self.rows.clear(), self.images.clear(), self.checkpoints.clear()
        self.stored_rows = 0

    def _write_failures(self) -> None:
        write_failures(self.out, self.failures, self.attempted)
        self.failed_before.difference_update(self.attempted)
        self.failed_before.update(f["image_id"] for f in self.failures)
        self.failures.clear(), self.attempted.clear()


@dataclass
class _Read:
    """One manifest item after the read step: skipped, failed, or decoded and ready."""

    item: ManifestItem
    status: str  # skip | fail | ready
    sha: str = ""
    key: str = ""
    recomputed: bool = False
    image: np.ndarray | None = None
    prompts: list = field(default_factory=list)
    failure: dict | None = None


def _failure(item: ManifestItem, e: Exception) -> dict:
    return {"image_id": item.image_id, "image": item.image, "error_type": type(e).__name__, "error": str(e)}


def _read_item(item: ManifestItem, done: dict, model: dict, settings: dict, clip, io_cfg) -> _Read:
    """Read bytes, hash, skip if stored under the same settings, decode, parse the prompts.
    Runs on the reader thread (decoding releases the GIL) while the model works."""
    name = item.image_id
    try:
        # 2. read bytes, hash, skip if stored under the same settings
        data = fetch_bytes(item.image, name, io_cfg)
        sha = sha256_bytes(data)
        key = settings_key(settings, model, item.prompts_json)
        stored = done.get((name, sha))
        if stored is not None and stored.get("settings") == key:
            return _Read(item, "skip")
        # 3. decode and validate prompts against the image size
        image = decode_image(data, name)
        h, w = image.shape[:2]
        prompts = [parse_prompt(p, w, h, f"{name} prompt {i}")
                   for i, p in enumerate(parse_prompts_json(item.prompts_json, name))]
        if any(p.text is not None for p in prompts) and clip is None:
            raise LcdError(f"{name}: has text prompts but no CLIP model was given", item=name)
        return _Read(item, "ready", sha, key, stored is not None, image, prompts)
    except Exception as e:  # one bad image never sinks the batch; the table says why
        return _Read(item, "fail", failure=_failure(item, e))


def _read_batch(items, done, model, settings, clip, io_cfg) -> list[_Read]:
    return [_read_item(it, done, model, settings, clip, io_cfg) for it in items]


def compute_masks(
    items: Sequence[ManifestItem],
    sam,
    model: dict,
    cfg: MasksConfig,
    out: str | Path,
    *,
    clip=None,
    after_image: Callable[[str], None] | None = None,
    io_cfg: IoConfig | None = None,
) -> MasksSummary:
    """Masks for every item not already stored under `out` (see lcd.masks.store for the layout).

    `model` is the SAM source row ({type, ref, sha256, revision}); `clip` is (model, processor)
    for text prompts (an image with text prompts and no clip fails with a clear error).
    `after_image(image_id)` is called after each image is stored (progress, tests): a kill
    after it loses none of the images reported so far.
    Images by URL are read within `io_cfg` (params.yaml `io`: connect, first-byte and whole-transfer
    deadlines, byte limit): a URL that hangs costs at most its deadline, then fails alone.
    An image is skipped only when stored with the same bytes, result settings
    (`cfg.result_settings()`), SAM weights and prompts; otherwise it is computed again and the
    newer part is what readers see (`summary.recomputed` counts those).
    Images go through the model `cfg.images_per_batch` at a time (one image-encoder call per
    batch); the next batch is read and decoded on a background thread meanwhile. Rows, parts and
    failures are the same, in the same order, whatever the batch size.
    """
    # 1. what is already stored: skip by (image_id, sha256) and the settings key
    done = done_images(Path(out))
    predictor = MaskPredictor(sam, cfg)
    summary = MasksSummary()
    buf = _PartBuffer(Path(out), cfg, summary, set(read_failures(out).column("image_id").to_pylist()))
    progress = Progress("masks", len(items), unit="images")
    settings = cfg.result_settings()  # what, beside bytes, weights and prompts, decides a re-run
    n = cfg.images_per_batch
    batches = [list(items[i:i + n]) for i in range(0, len(items), n)]
    with ThreadPoolExecutor(1, thread_name_prefix="lcd-masks-read") as reader:
        nxt = reader.submit(_read_batch, batches[0], done, model, settings, clip, io_cfg) if batches else None
        for k in range(len(batches)):
            reads = nxt.result()
            nxt = (reader.submit(_read_batch, batches[k + 1], done, model, settings, clip, io_cfg)
                   if k + 1 < len(batches) else None)
            for r, records in _run_batch(reads, predictor, clip, cfg):
                if _record(r, records, buf, model):
                    # 5. store the image now (a checkpoint part; a whole part every images_per_part images)
                    buf.store_image()
                    if after_image is not None:
                        after_image(r.item.image_id)
                progress.advance()
    buf.flush()
    summary.encoder_passes = predictor.predictor.encoder_passes
    progress.close(f"{summary.done} computed ({summary.recomputed} under changed settings), {summary.skipped} "
                   f"already stored, {summary.failed} failed, {summary.masks} masks")
    return summary


def _run_batch(reads: list[_Read], predictor: MaskPredictor, clip, cfg: MasksConfig):
    """-> (read, records or an exception) per item, in order. The ready images are embedded in
    one encoder call; if that call fails, each is embedded alone so only its own image fails."""
    ready = [r for r in reads if r.status == "ready"]
    embs: list = [None] * len(ready)
    if len(ready) > 1:
        try:
            embs = predictor.embed([r.image for r in ready])
        except Exception:  # noqa: BLE001 - retried one by one below, where the error is the item's
            embs = [None] * len(ready)
    by_id = {id(r): e for r, e in zip(ready, embs)}
    for r in reads:
        if r.status != "ready":
            yield r, None
            continue
        try:
            # 4. one encoder pass, all prompts batched, automatic masks on the same embedding
            records = predictor.predict(r.image, r.prompts, embedding=by_id[id(r)])
            records += text_records(r.image, records, r.prompts, clip, cfg) if clip is not None else []
        except Exception as e:  # one bad image never sinks the batch
            records = e
        by_id[id(r)] = None  # release the embedding
        yield r, records


def _record(r: _Read, records, buf: _PartBuffer, model: dict) -> bool:
    """Buffer one item's outcome (rows, a failure, or a skip) -> True when masks were buffered."""
    name, summary = r.item.image_id, buf.summary
    if r.status == "skip":
        summary.skipped += 1
        return False
    if name not in buf.attempted:
        buf.attempted.append(name)
    if isinstance(records, Exception) or r.status == "fail":
        buf.failures.append(r.failure if r.status == "fail" else _failure(r.item, records))
        summary.failed += 1
        return False
    summary.recomputed += r.recomputed
    h, w = r.image.shape[:2]
    buf.rows.extend(image_rows(name, r.item.image, r.sha, w, h, records, model))
    buf.images.append({"image_id": name, "image_sha256": r.sha, "width": w, "height": h,
                       "n_masks": len(records), "settings": r.key})
    summary.done += 1
    summary.masks += len(records)
    return True
