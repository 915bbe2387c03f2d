"""COCO compressed RLE, vectorised in numpy (no per-pixel or per-character Python loops).

The format is pycocotools' (`maskApi.c`: rleEncode / rleToString / rleFrString): a mask is
flattened in column-major (Fortran) order, run lengths alternate 0-runs and 1-runs starting with
zeros, and counts are written as a LEB128-like string of 6-bit chars (ASCII 48..111), each count
after the third stored as the difference to the count two places before. We reimplement it so
encoding and decoding many masks is a few numpy calls, and so readers need no C extension.

Shapes: a mask is (H, W) bool; an RLE is {"size": [H, W], "counts": str}.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from lcd.errors import LcdError

_MAX_CHUNKS = 8  # 5 payload bits per char: 8 chars cover any signed 40-bit delta


def run_lengths(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool -> int64 run lengths in column-major order, starting with a (maybe empty) 0-run."""
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    if flat.size == 0:
        return np.zeros(0, dtype=np.int64)
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], change, [flat.size]))
    counts = np.diff(bounds).astype(np.int64)
    if flat[0]:
        counts = np.concatenate(([0], counts))
    return counts


def counts_to_string(counts: np.ndarray) -> str:
    """Run lengths -> COCO counts string (pycocotools `rleToString`), vectorised over counts."""
    c = np.asarray(counts, dtype=np.int64)
    x = c.copy()
    if x.size > 3:
        x[3:] -= c[1:-2]  # delta to the count two places before, from the 4th count on
    shifts = 5 * np.arange(_MAX_CHUNKS, dtype=np.int64)
    chunk = (x[:, None] >> shifts) & 0x1F  # (n, K) 5-bit groups, low first
    rest = x[:, None] >> (shifts + 5)  # arithmetic shift: what remains after each group
    more = np.where(chunk & 0x10, rest != -1, rest != 0)
    # a group is written if it is the first or the previous group said "more"
    emitted = np.ones_like(more)
    emitted[:, 1:] = np.cumprod(more[:, :-1], axis=1).astype(bool)
    chars = (chunk | np.where(more, 0x20, 0)) + 48
    return chars[emitted].astype(np.uint8).tobytes().decode("ascii")


def _string_to_numbers(s: bytes | str) -> np.ndarray:
    """Counts string -> the raw (still delta-coded) signed numbers, vectorised over chars."""
    b = np.frombuffer(s.encode("ascii") if isinstance(s, str) else s, dtype=np.uint8)
    if b.size == 0:
        return np.zeros(0, dtype=np.int64)
    c = b.astype(np.int64) - 48
    if (c < 0).any() or (c > 63).any():
        raise ValueError("RLE counts string has characters outside ASCII 48..111")
    ends = np.flatnonzero((c & 0x20) == 0)
    if ends.size == 0 or ends[-1] != c.size - 1:
        raise ValueError("RLE counts string ends inside a number")
    starts = np.concatenate(([0], ends[:-1] + 1))
    k = np.arange(c.size) - np.repeat(starts, ends - starts + 1)  # group index within its number
    vals = np.add.reduceat((c & 0x1F) << (5 * k), starts)
    last = c[ends]
    nbits = 5 * (ends - starts + 1)
    neg = (last & 0x10) != 0
    vals = np.where(neg, vals | (-1 << nbits), vals)  # sign-extend, as rleFrString does
    return vals


def string_to_counts(s: bytes | str) -> np.ndarray:
    """COCO counts string -> int64 run lengths (undoes the delta coding with two cumsums)."""
    x = _string_to_numbers(s)
    counts = x.copy()
    if x.size > 3:
        # counts[i] = x[i] + counts[i-2] for i > 2: chains 1,3,5,... and 2,4,6,... are cumsums
        counts[1::2] = np.cumsum(x[1::2])
        counts[2::2] = np.cumsum(x[2::2])
    return counts


def encode_rle(mask: np.ndarray) -> dict:
    """(H, W) bool -> {"size": [H, W], "counts": str}, byte-identical to pycocotools' encoding."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise LcdError(f"mask must be 2-D (H, W), got shape {m.shape}", item="mask")
    return {"size": [int(m.shape[0]), int(m.shape[1])], "counts": counts_to_string(run_lengths(m))}


def encode_rles(masks: np.ndarray) -> list[dict]:
    """(N, H, W) bool -> N RLE dicts."""
    return [encode_rle(m) for m in np.asarray(masks)]


def _check_counts(counts: np.ndarray, h: int, w: int, name: str) -> None:
    if (counts < 0).any() or int(counts.sum()) != h * w:
        raise LcdError(
            f"{name}: RLE counts sum to {int(counts.sum())} (or are negative) but size is {h}x{w}={h * w}",
            item=name,
        )


def decode_rle(rle: dict, name: str = "rle") -> np.ndarray:
    """{"size": [H, W], "counts": str|bytes} -> (H, W) bool."""
    h, w = (int(v) for v in rle["size"])
    try:
        counts = string_to_counts(rle["counts"])
    except ValueError as e:
        raise LcdError(f"{name}: bad RLE counts: {e}", item=name) from None
    _check_counts(counts, h, w, name)
    values = (np.arange(counts.size) % 2).astype(bool)
    return np.repeat(values, counts).reshape(w, h).T


def decode_rles(counts: Sequence[str | bytes], height: int, width: int, names: Sequence[str] | None = None) -> np.ndarray:
    """Many RLEs of one size -> (N, H, W) bool in one pass.

    All strings are parsed together (one frombuffer, one reduceat); the delta chains are undone
    with a segmented cumsum; the pixels come from one np.repeat. This is the read path's hot loop.
    """
    n = len(counts)
    if n == 0:
        return np.zeros((0, height, width), dtype=bool)
    parts = [c.encode("ascii") if isinstance(c, str) else bytes(c) for c in counts]
    lens = np.array([len(p) for p in parts], dtype=np.int64)
    try:
        # every number ends inside its own string, so parsing the concatenation is exact
        for i, p in enumerate(parts):
            if not p or (p[-1] - 48) & 0x20:
                raise ValueError(f"RLE #{i} is empty or ends inside a number")
        x = _string_to_numbers(b"".join(parts))
    except ValueError as e:
        raise LcdError(f"{names[0] if names else 'rles'}: bad RLE counts: {e}", item="rle") from None
    # which mask each number belongs to: count number-ends per string
    b = np.frombuffer(b"".join(parts), dtype=np.uint8).astype(np.int64) - 48
    is_end = (b & 0x20) == 0
    per_mask = np.add.reduceat(is_end, np.concatenate(([0], np.cumsum(lens)[:-1]))).astype(np.int64)
    mask_idx = np.repeat(np.arange(n), per_mask)
    first = np.concatenate(([0], np.cumsum(per_mask)[:-1]))
    pos = np.arange(x.size) - np.repeat(first, per_mask)
    # chain id: pos 0 alone; odd positions one chain; even positions >= 2 another (per mask)
    chain = mask_idx * 3 + np.where(pos == 0, 0, np.where(pos % 2 == 1, 1, 2))
    order = np.argsort(chain, kind="stable")
    xs = x[order]
    cs = np.cumsum(xs)
    ch = chain[order]
    seg_start = np.flatnonzero(np.concatenate(([True], ch[1:] != ch[:-1])))
    seg_len = np.diff(np.concatenate((seg_start, [xs.size])))
    offset = np.repeat(np.where(seg_start > 0, cs[seg_start - 1], 0), seg_len)
    cnt = np.empty_like(x)
    cnt[order] = cs - offset
    sums = np.bincount(mask_idx, weights=cnt, minlength=n)
    bad = np.flatnonzero((sums != height * width))
    if bad.size or (cnt < 0).any():
        i = int(bad[0]) if bad.size else int(mask_idx[np.flatnonzero(cnt < 0)[0]])
        name = names[i] if names else f"rle #{i}"
        raise LcdError(f"{name}: RLE counts sum to {int(sums[i])} but size is {height}x{width}", item=name)
    values = (pos % 2).astype(bool)
    flat = np.repeat(values, cnt)
    return flat.reshape(n, width, height).transpose(0, 2, 1)


def rle_area(rle: dict) -> int:
    """Foreground pixel count without decoding the pixels."""
    return int(string_to_counts(rle["counts"])[1::2].sum())
