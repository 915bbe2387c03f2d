"""Checking an image's stored mask rows before any mask is decoded.

A masks store is a file anyone can write (another tool, an older version, a hand-edited part):
a row claiming 10^9 x 10^9 pixels made the RLE decoder raise MemoryError, one of 40,000 x
40,000 took 16 GB before the kernel killed the edit shard. So the rows of one image are read as
columns and checked first: sizes positive, one size for all masks, equal to the image the edit
loaded, under a pixel limit; RLE counts non-negative and summing to exactly H*W (parsed, not
decoded: lcd.masks.rle.rle_summaries); stored areas equal to what the counts say, boxes inside
the image, scores finite. Each failure is a MaskRowError of one line naming the store part, the
image id and the reason; an edit shard records it as that item's failure.

Rows without an area or a box (null: a part of another tool) are still usable: the area comes
from the counts, the box from decoding that one mask when a selection needs it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lcd.errors import LcdError
from lcd.masks.rle import rle_summaries


class MaskRowError(LcdError):
    """A stored mask row is malformed, too large, or does not fit the image it names."""


@dataclass(frozen=True)
class CheckedRows:
    """One image's rows after check_image_rows: their common size and per-mask columns."""

    height: int
    width: int
    counts: list  # COCO counts strings, row order
    area: np.ndarray  # (N,) int64, from the counts (equal to the stored area where there is one)
    bbox: np.ndarray  # (N, 4) int64 XYWH; -1 where the row stores none (see bbox_known)
    bbox_known: np.ndarray  # (N,) bool
    predicted_iou: np.ndarray  # (N,) float64, NaN where the row stores none
    stability: np.ndarray  # (N,) float64, NaN where the row stores none
    mask_id: np.ndarray  # (N,) int64


def _mp(pixels: int) -> str:
    if pixels < 1e6:
        return f"{pixels} pixels"
    return f"{pixels / 1e6:.0f} MP" if pixels < 1e12 else f"{pixels:.3g} pixels"


def _ints(table: pa.Table, name: str, width: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A column (or a list column of `width` ints) -> (int64 values, valid rows); a missing
    column reads as all null, and a list with a null element or of another length is invalid."""
    n = table.num_rows
    if name not in table.column_names:
        return np.full((n, width) if width else n, -1, np.int64), np.zeros(n, bool)
    col = table.column(name).combine_chunks()
    valid = ~np.asarray(pc.is_null(col).to_numpy(zero_copy_only=False), bool)
    if not width:
        return np.asarray(col.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64), valid
    if isinstance(col, pa.FixedSizeListArray) and col.type.list_size == width:
        flat = col.values.slice(col.offset * width, n * width)  # every slot, null lists' too
        vals = np.asarray(flat.fill_null(-1).to_numpy(zero_copy_only=False), np.int64).reshape(n, width)
        holes = np.asarray(pc.is_null(flat).to_numpy(zero_copy_only=False), bool).reshape(n, width)
        return vals, valid & ~holes.any(axis=1)
    rows = col.to_pylist()  # a plain list column (another writer): row by row
    ok = np.array([r is not None and len(r) == width and None not in r for r in rows], bool)
    vals = np.array([r if k else [-1] * width for r, k in zip(rows, ok)], dtype=np.int64).reshape(n, width)
    return vals, ok


def _floats(table: pa.Table, name: str) -> np.ndarray:
    if name not in table.column_names:
        return np.full(table.num_rows, np.nan)
    return np.asarray(table.column(name).to_numpy(zero_copy_only=False), dtype=np.float64)  # nulls -> NaN


class _Bad(Exception):
    """One reason a row is refused; check_image_rows names the store and the image in front."""


def _first(bad: np.ndarray) -> int:
    return int(np.flatnonzero(bad)[0])


def _size(table: pa.Table, label) -> tuple[int, int, pa.Array]:
    """The rows' common (H, W), from RLE sizes that agree with the width/height columns -> (H, W,
    the counts column)."""
    if "rle" not in table.column_names or table.num_rows == 0:
        raise _Bad("no mask rows" if table.num_rows == 0 else "no rle column")
    rle = table.column("rle").combine_chunks()
    counts = rle.field("counts")
    size, size_ok = _ints(pa.table({"size": rle.field("size")}), "size", 2)
    ok = size_ok & ~np.asarray(pc.is_null(rle).to_numpy(zero_copy_only=False), bool) \
        & ~np.asarray(pc.is_null(counts).to_numpy(zero_copy_only=False), bool)
    if not ok.all():
        raise _Bad(f"{label(_first(~ok))} has no RLE size and counts")
    hs, h_ok = _ints(table, "height")
    ws, w_ok = _ints(table, "width")
    off = h_ok & w_ok & ((hs != size[:, 0]) | (ws != size[:, 1]))
    if off.any():
        i = _first(off)
        raise _Bad(f"{label(i)}: RLE size {size[i, 1]}x{size[i, 0]} (WxH) differs from its width x height {ws[i]}x{hs[i]}")
    h, w = (int(v) for v in size[0])
    other = (size[:, 0] != h) | (size[:, 1] != w)
    if other.any():
        i = _first(other)
        raise _Bad(f"masks of different sizes: {label(0)} is {w}x{h}, {label(i)} is {size[i, 1]}x{size[i, 0]}")
    if h <= 0 or w <= 0:
        raise _Bad(f"stored mask size {w}x{h} is not positive")
    return h, w, counts


def _columns(table: pa.Table, label, h: int, w: int) -> tuple[np.ndarray, np.ndarray, dict, np.ndarray, np.ndarray]:
    """Per-mask columns checked: boxes inside the mask, finite scores, areas within the size ->
    (bbox, bbox known, {score column: values}, stored area, area known)."""
    bbox, known = _ints(table, "bbox", 4)
    x, y, bw, bh = bbox.T
    out = known & ~((x >= 0) & (y >= 0) & (bw >= 0) & (bh >= 0) & (x + bw <= w) & (y + bh <= h))
    if out.any():
        i = _first(out)
        raise _Bad(f"{label(i)}: bbox {bbox[i].tolist()} (XYWH) is outside the {w}x{h} mask")
    bbox[~known] = -1
    scores = {}
    for col in ("predicted_iou", "stability_score"):
        vals = _floats(table, col)
        bad = ~np.isfinite(vals) & ~np.isnan(vals)  # null reads as NaN: allowed (ranks last); inf is not
        if col in table.column_names:
            bad |= np.isnan(vals) & ~np.asarray(pc.is_null(table.column(col)).to_numpy(zero_copy_only=False), bool)
        if bad.any():
            raise _Bad(f"{label(_first(bad))}: {col} is {vals[_first(bad)]}, not a finite number")
        scores[col] = vals
    stored, area_ok = _ints(table, "area")
    bad = area_ok & ((stored < 0) | (stored > h * w))
    if bad.any():
        raise _Bad(f"{label(_first(bad))}: stored area {stored[_first(bad)]} is outside 0..{h * w}")
    return bbox, known, scores, stored, area_ok


def check_image_rows(table: pa.Table, *, where: str, image_id: str, image_size: tuple[int, int] | None = None,
                     max_pixels: int | None = None, counts: bool = True) -> CheckedRows:
    """Check the rows of one image (MASK_SCHEMA columns) before decoding -> CheckedRows.

    where: the store file or part the rows come from (named in errors); image_size: (H, W) of the
    image the masks are for, when known (an edit shard's loaded scene); max_pixels: H*W limit
    (default lcd.io.images.MAX_PIXELS; an image_size that passed its own loader's limit raises it
    to that size); counts=False skips parsing the RLE counts (areas then are the stored ones, -1
    where none is stored).
    """
    from lcd.io.images import MAX_PIXELS

    mask_id, id_ok = _ints(table, "mask_id")
    label = lambda i: f"mask {mask_id[i]}" if id_ok[i] else f"row {i}"  # noqa: E731
    try:
        if not id_ok.all():
            raise _Bad(f"{label(_first(~id_ok))} has no mask_id")
        # 1. sizes: positive, the same in the width/height columns and the RLE, one for all rows
        h, w, counts_col = _size(table, label)
        # 2. a pixel limit before anything the size of a mask is allocated, then the image's size
        limit = MAX_PIXELS if max_pixels is None else int(max_pixels)
        if image_size is not None:
            limit = max(limit, int(image_size[0]) * int(image_size[1]))
        if h * w > limit:
            raise _Bad(f"stored mask size {w}x{h} is {_mp(h * w)}, above the limit of {_mp(limit)}")
        if image_size is not None and (h, w) != (int(image_size[0]), int(image_size[1])):
            raise _Bad(f"stored masks are {w}x{h} but the image is {int(image_size[1])}x{int(image_size[0])}")
        # 3. per-mask columns
        bbox, known, scores, stored, area_ok = _columns(table, label, h, w)
        # 4. the counts: non-negative, summing to exactly h*w; their areas are the stored ones
        counts_list = counts_col.to_pylist()
        if not counts:
            area = np.where(area_ok, stored, -1)
        else:
            try:
                area = rle_summaries(counts_list, h, w, names=label)
            except LcdError as e:
                raise _Bad(str(e)) from None
            bad = area_ok & (stored != area)
            if bad.any():
                i = _first(bad)
                raise _Bad(f"{label(i)}: stored area {stored[i]} but its RLE covers {area[i]} pixels")
    except _Bad as e:
        raise MaskRowError(f"{where}: image {image_id!r}: {e}", item=image_id) from None
    return CheckedRows(h, w, counts_list, area, bbox, known, scores["predicted_iou"], scores["stability_score"],
                       mask_id)
