"""Read API: (masks table, image_id, selection) -> the selected mask as an (H, W) bool array.

This is what `lcd edit --masks FILE --select SPEC` and downstream stages call: rows of the image
are read with a pyarrow filter, their RLEs decoded in one vectorised pass, and the selection
applied. Text selection re-reads the image (checked against the stored SHA-256) for CLIP.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lcd.errors import InputImageError
from lcd.masks.manifest import decode_image, fetch_bytes, sha256_bytes
from lcd.masks.select import Selection, parse_selection, select_by_text, select_index
from lcd.masks.store import MaskStore, read_masks, read_rows

DIGEST_COLUMNS = ["image_sha256", "mask_id", "rle", "predicted_iou", "stability_score", "model"]


def stored_masks_digest(path: str | Path | MaskStore, image_id: str) -> str:
    """sha256 of what a selection on `image_id` can depend on: its stored rows (RLEs, scores,
    image and model hashes), in mask_id order. Recomputed masks -> a new digest, so an edit made
    from a `sam:` region is redone when the masks under it change. Raises LcdError when the
    store has no rows for the image."""
    import hashlib
    import json

    rows = read_rows(path, image_id, columns=DIGEST_COLUMNS).to_pylist()
    return hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()


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
) -> np.ndarray:
    """The edit region from stored masks: `select_mask`, then holes filled and dilated per `cfg`
    (a MasksConfig: fill_holes, dilate_px, text_crop_margin). One function, so `lcd edit --masks`
    and edit-batch's `sam:` regions give the same region for the same rule."""
    from lcd.masks.postprocess import postprocess_mask

    mask, _ = select_mask(path, image_id, select, clip=clip, image=image, text_margin=cfg.text_crop_margin)
    return postprocess_mask(mask, fill=cfg.fill_holes, dilate_px=cfg.dilate_px)


def select_mask(
    path: str | Path | MaskStore,
    image_id: str,
    select: str | Selection = "best",
    *,
    clip=None,
    image: np.ndarray | None = None,
    text_margin: float = 0.1,
) -> tuple[np.ndarray, dict]:
    """-> ((H, W) bool mask, its row as a dict without the RLE). `path`: a store folder, a part
    file, or a MaskStore opened once for many lookups.

    `clip` = (CLIPModel, CLIPProcessor) is needed for `text:` selections; `image` (H, W, 3) uint8
    skips re-reading the image for them.
    """
    sel = parse_selection(select) if isinstance(select, str) else select
    table, masks = read_masks(path, image_id)
    cols = table.select(["mask_id", "area", "predicted_iou", "stability_score", "bbox"]).to_pydict()
    bboxes = np.array(cols["bbox"], dtype=np.int64).reshape(-1, 4)

    def text_pick() -> int:
        img = image if image is not None else load_stored_image(table.slice(0, 1).to_pylist()[0])
        return select_by_text(img, masks, bboxes, sel.text, clip, text_margin)[0]

    k = select_index(
        sel, area=np.array(cols["area"]), predicted_iou=np.array(cols["predicted_iou"]),
        stability=np.array(cols["stability_score"]), bboxes=bboxes, mask_ids=np.array(cols["mask_id"]),
        masks=masks, text_pick=text_pick if clip is not None else None, name=image_id,
    )
    row = table.slice(k, 1).drop(["rle"]).to_pylist()[0]
    return np.ascontiguousarray(masks[k]), row
