"""Read API: (masks table, image_id, selection) -> the selected mask as an (H, W) bool array.

This is what `lcd edit --masks FILE --select SPEC` and downstream stages call: rows of the image
are read with a pyarrow filter and checked (lcd.masks.rows), the selection applied to the stored
columns, and only the selected mask decoded. Text selection re-reads the image (checked against
the stored SHA-256) for CLIP.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lcd.errors import InputImageError
from lcd.masks.manifest import decode_image, fetch_bytes, sha256_bytes
from lcd.masks.rle import decode_rle, rles_contain
from lcd.masks.select import Selection, parse_selection, select_by_text, select_index
from lcd.masks.store import MaskStore, open_store, read_rows

DIGEST_COLUMNS = ["image_sha256", "mask_id", "rle", "predicted_iou", "stability_score", "model"]


def stored_masks_digest(path: str | Path | MaskStore, image_id: str) -> str:
    """sha256 of what a selection on `image_id` can depend on: its stored rows (RLEs, scores,
    image and model hashes), in mask_id order. Recomputed masks -> a new digest, so an edit made
    from a `sam:` region is redone when the masks under it change. Raises LcdError when the
    store has no rows for the image. The JSON of the row list is hashed a batch of rows at a
    time (the same bytes as one json.dumps of the list), so 10^5 masks cost no 10^5 dicts at once."""
    import hashlib
    import json

    table = read_rows(path, image_id, columns=DIGEST_COLUMNS)
    digest = hashlib.sha256(b"[")
    first = True
    for batch in table.to_batches(max_chunksize=4096):
        for row in batch.to_pylist():
            digest.update((b"" if first else b", ") + json.dumps(row, sort_keys=True, default=str).encode())
            first = False
    digest.update(b"]")
    return digest.hexdigest()


def load_stored_image(row: dict, image: str | None = None) -> np.ndarray:
    """The image a mask row was computed from; a changed file (other SHA-256) is an error."""
    ref = image or row["image"]
    data = fetch_bytes(ref, row["image_id"])
    if sha256_bytes(data) != row["image_sha256"]:
        raise InputImageError(
            f"{row['image_id']}: {ref} changed since its masks were computed (sha256 differs); re-run lcd masks",
            item=row["image_id"],
        )
    return decode_image(data, row["image_id"])


def select_region_mask(
    path: str | Path | MaskStore,
    image_id: str,
    select: str,
    cfg,
    *,
    clip=None,
    image: np.ndarray | None = None,
    max_pixels: int | None = None,
) -> np.ndarray:
    """The edit region from stored masks: `select_mask`, then holes filled and dilated per `cfg`
    (a MasksConfig: fill_holes, dilate_px, text_crop_margin). One function, so `lcd edit --masks`
    and edit-batch's `sam:` regions give the same region for the same rule."""
    from lcd.masks.postprocess import postprocess_mask

    mask, _ = select_mask(path, image_id, select, clip=clip, image=image, text_margin=cfg.text_crop_margin,
                          max_pixels=max_pixels)
    return postprocess_mask(mask, fill=cfg.fill_holes, dilate_px=cfg.dilate_px)


def select_mask(
    path: str | Path | MaskStore,
    image_id: str,
    select: str | Selection = "best",
    *,
    clip=None,
    image: np.ndarray | None = None,
    text_margin: float = 0.1,
    image_size: tuple[int, int] | None = None,
    max_pixels: int | None = None,
) -> tuple[np.ndarray, dict]:
    """-> ((H, W) bool mask, its row as a dict without the RLE). `path`: a store folder, a part
    file, or a MaskStore opened once for many lookups.

    The image's rows are checked before any decode (lcd.masks.rows: sizes, the pixel limit
    `max_pixels`, the size of `image` or `image_size` (H, W) when given, counts and areas), the
    rule is applied to the stored columns (area, scores, boxes; `point:` reads the run lengths),
    and only the chosen mask is decoded; `text:` decodes one mask at a time for its crop.
    `clip` = (CLIPModel, CLIPProcessor) is needed for `text:` selections; `image` (H, W, 3) uint8
    skips re-reading the image for them.
    """
    # 1. the rule, the rows, and their checks (nothing decoded yet)
    sel = parse_selection(select) if isinstance(select, str) else select
    store = open_store(path)
    if image is not None and image_size is None:
        image_size = tuple(image.shape[:2])
    table, rows = store.checked(image_id, image_size=image_size, max_pixels=max_pixels)
    h, w = rows.height, rows.width

    def decode(k: int) -> np.ndarray:
        return decode_rle({"size": [h, w], "counts": rows.counts[k]}, f"{image_id}#{int(rows.mask_id[k])}")

    # 2. boxes that the rows do not store, when the rule reads boxes: from their decoded mask, one at a time
    bboxes = rows.bbox.copy()
    if sel.kind in ("box", "text") and not rows.bbox_known.all():
        for k in np.flatnonzero(~rows.bbox_known):
            bboxes[k] = mask_bbox(decode(int(k)))

    def text_pick() -> int:
        img = image if image is not None else load_stored_image(table.slice(0, 1).to_pylist()[0])
        masks = (decode(k) for k in range(len(rows.counts)))  # crops are made one mask at a time
        return select_by_text(img, masks, bboxes, sel.text, clip, text_margin)[0]

    def point_hits(x: int, y: int) -> np.ndarray:
        return rles_contain(rows.counts, h, w, y, x)

    # 3. the rule on the columns, then the one mask it chose
    k = select_index(
        sel, area=rows.area, predicted_iou=rows.predicted_iou, stability=rows.stability, bboxes=bboxes,
        mask_ids=rows.mask_id, shape=(h, w), point_hits=point_hits,
        text_pick=text_pick if clip is not None else None, name=image_id,
    )
    row = table.slice(k, 1).drop(["rle"]).to_pylist()[0]
    mask = np.ascontiguousarray(decode(k))
    if row.get("area") is None:  # a row without them (another writer): what the mask says
        row["area"] = int(rows.area[k])
    if row.get("bbox") is None:
        row["bbox"] = mask_bbox(mask)
    return mask, row


def mask_bbox(mask: np.ndarray) -> list[int]:
    """(H, W) bool -> XYWH box of its pixels ([0, 0, 0, 0] when empty), as SAM's records store it."""
    ys, xs = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not ys.size:
        return [0, 0, 0, 0]
    return [int(xs[0]), int(ys[0]), int(xs[-1] - xs[0] + 1), int(ys[-1] - ys[0] + 1)]
