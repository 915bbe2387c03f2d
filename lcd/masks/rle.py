"""COCO compressed RLE, vectorised in numpy (no per-pixel or per-character Python loops).

The format is pycocotools' (`maskApi.c`: rleEncode / rleToString / rleFrString): a mask is
flattened in column-major (Fortran) order, run lengths alternate 0-runs and 1-runs starting with
zeros, and counts are written as a LEB128-like string of 6-bit chars (ASCII 48..111), each count
after the third stored as the difference to the count two places before. We reimplement it so
encoding and decoding many masks is a few numpy calls, and so readers need no C extension.

Shapes: a mask is (H, W) bool; an RLE is {"size": [H, W], "counts": str}.
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

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
    b = np.frombuffer(s.encode("utf-8", "replace") if isinstance(s, str) else s, dtype=np.uint8)
    if b.size == 0:
        return np.zeros(0, dtype=np.int64)
    c = b.astype(np.int64) - 48
    if (c < 0).any() or (c > 63).any():
        raise ValueError("RLE counts string has characters outside ASCII 48..111")
    ends = np.flatnonzero((c & 0x20) == 0)
    if ends.size == 0 or ends[-1] != c.size - 1:
        raise ValueError("RLE counts string ends inside a number")
    starts = np.concatenate(([0], ends[:-1] + 1))
    if int((ends - starts).max()) >= _MAX_CHUNKS:  # a longer number would shift past 64 bits and wrap
        raise ValueError(f"RLE counts string has a number longer than {_MAX_CHUNKS} characters")
    k = np.arange(c.size) - np.repeat(starts, ends - starts + 1)  # group index within its number
    vals = np.add.reduceat((c & 0x1F) << (5 * k), starts)
    last = c[ends]
    nbits = 5 * (ends - starts + 1)
    neg = (last & 0x10) != 0
    vals = np.where(neg, vals | (-1 << nbits), vals)  # sign-extend, as rleFrString does
    return vals


def encode_rle(mask: np.ndarray) -> dict:
    """(H, W) bool -> {"size": [H, W], "counts": str}, byte-identical to pycocotools' encoding."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise LcdError(f"mask must be 2-D (H, W), got shape {m.shape}", item="mask")
    return {"size": [int(m.shape[0]), int(m.shape[1])], "counts": counts_to_string(run_lengths(m))}


def encode_rles(masks: np.ndarray) -> list[dict]:
    """(N, H, W) bool -> N RLE dicts."""
    return [encode_rle(m) for m in np.asarray(masks)]


WINDOW_CHARS = 1 << 18  # counts characters parsed at a time (~40 bytes of arrays each): bounded memory


def iter_counts(s: bytes | str, window: int | None = None) -> Iterator[np.ndarray]:
    """COCO counts string -> its int64 run lengths, `window` characters at a time (each window
    cut after a number's last character), so a hostile string of any length needs arrays of
    window size, never of its own. Raises ValueError for a malformed string."""
    b = s.encode("utf-8", "replace") if isinstance(s, str) else bytes(s)
    pos, k = 0, 0  # chars consumed, counts yielded
    carry = np.zeros(2, dtype=np.int64)  # last count of the odd chain and of the even (>= 2) chain
    while pos < len(b):
        end = min(pos + max(window or WINDOW_CHARS, 2 * _MAX_CHUNKS), len(b))
        if end < len(b):
            c = np.frombuffer(b, dtype=np.uint8, count=end - pos, offset=pos).astype(np.int64) - 48
            ends = np.flatnonzero((c & 0x20) == 0)
            if ends.size == 0:
                raise ValueError(f"RLE counts string has a number longer than {_MAX_CHUNKS} characters")
            end = pos + int(ends[-1]) + 1
        x = _string_to_numbers(b[pos:end])
        # counts[i] = x[i] + counts[i-2] for i > 2: the odd and the even (>= 2) positions are cumsums
        g = k + np.arange(x.size)
        counts = x.copy()
        for parity, sel in ((1, g % 2 == 1), (0, (g % 2 == 0) & (g >= 2))):
            if sel.any():
                counts[sel] = np.cumsum(x[sel]) + carry[parity]
                carry[parity] = counts[sel][-1]
        yield counts
        pos, k = end, k + x.size


def string_to_counts(s: bytes | str) -> np.ndarray:
    """COCO counts string -> int64 run lengths (undoes the delta coding with two cumsums)."""
    parts = list(iter_counts(s))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _bad_counts(name: str, h: int, w: int, total: int, negative: bool) -> LcdError:
    why = "has a negative run length" if negative else f"counts sum to {total} but size is {h}x{w}={h * w}"
    return LcdError(f"{name}: RLE {why}", item=name)


def rle_summary(s: bytes | str, h: int, w: int, name: str = "rle") -> tuple[int, int]:
    """Check a counts string against its size without decoding a pixel -> (runs, foreground
    area). Run lengths must be non-negative and sum to exactly h*w; window-sized memory."""
    runs, total, area = 0, 0, 0
    try:
        for counts in iter_counts(s):
            if counts.size and int(counts.min()) < 0:
                raise _bad_counts(name, h, w, total, True)
            total += int(counts.sum())
            area += int(counts[(runs + 1) % 2::2].sum())  # odd global positions are the 1-runs
            runs += counts.size
    except ValueError as e:
        if isinstance(e, LcdError):
            raise
        raise LcdError(f"{name}: bad RLE counts: {e}", item=name) from None
    if total != h * w:
        raise _bad_counts(name, h, w, total, False)
    return runs, area


def decode_rle(rle: dict, name: str = "rle") -> np.ndarray:
    """{"size": [H, W], "counts": str|bytes} -> (H, W) bool. The counts are checked (sum, sign)
    before the H*W pixels are allocated; callers bound H*W (lcd.masks.rows.check_image_rows)."""
    h, w = (int(v) for v in rle["size"])
    if h < 0 or w < 0:
        raise LcdError(f"{name}: RLE size {h}x{w} is negative", item=name)
    rle_summary(rle["counts"], h, w, name)
    flat = np.empty(h * w, dtype=bool)
    p, k = 0, 0
    for counts in iter_counts(rle["counts"]):
        n = int(counts.sum())
        flat[p:p + n] = np.repeat(((k + np.arange(counts.size)) % 2).astype(bool), counts)
        p, k = p + n, k + counts.size
    return flat.reshape(w, h).T


def _many_counts(parts: Sequence[bytes], names: Sequence[str] | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Many counts strings parsed together -> (run lengths, the mask index of each, its position
    within its mask): one frombuffer, one reduceat, the delta chains undone by a segmented cumsum."""
    n = len(parts)
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
    return cnt, mask_idx, pos


def _as_bytes(counts: Sequence[str | bytes]) -> list[bytes]:
    return [c.encode("utf-8", "replace") if isinstance(c, str) else bytes(c) for c in counts]


def _groups(parts: list[bytes]) -> Iterator[tuple[int, int]]:
    """[i, j) ranges of `parts`: runs of short strings of about WINDOW_CHARS characters in all,
    parsed together; a string of WINDOW_CHARS or more alone (then parsed window by window)."""
    i = 0
    while i < len(parts):
        j, chars = i, 0
        while j < len(parts) and chars < WINDOW_CHARS and (j == i or len(parts[j]) < WINDOW_CHARS):
            chars += len(parts[j])
            j += 1
            if chars >= WINDOW_CHARS:
                break
        yield i, j
        i = j


def rle_summaries(counts: Sequence[str | bytes], height: int, width: int,
                  names: "Sequence[str] | Callable[[int], str] | None" = None) -> np.ndarray:
    """Many counts strings of one size, checked as rle_summary does -> (N,) int64 foreground
    areas, no pixel decoded. Short strings are parsed together in groups of about WINDOW_CHARS
    characters (10^5 tiny masks: a few vectorised passes); a longer one alone, window by window.
    `names`: each string's name for errors (a list, or index -> name)."""
    parts = _as_bytes(counts)
    areas = np.zeros(len(parts), dtype=np.int64)
    name = names if callable(names) else (lambda i: names[i] if names else f"rle #{i}")  # noqa: E731
    for i, j in _groups(parts):
        if j == i + 1 and len(parts[i]) >= WINDOW_CHARS:
            areas[i] = rle_summary(parts[i], height, width, name(i))[1]
            continue
        try:
            cnt, mask_idx, pos = _many_counts(parts[i:j], None)
        except LcdError:  # a malformed string in the group: find it and name it
            for k in range(i, j):
                rle_summary(parts[k], height, width, name(k))
            raise
        if cnt.size and (cnt < 0).any():
            raise _bad_counts(name(i + int(mask_idx[np.flatnonzero(cnt < 0)[0]])), height, width, 0, True)
        sums = np.bincount(mask_idx, weights=cnt, minlength=j - i)  # float64: exact below 2^53
        bad = np.flatnonzero(sums != height * width)
        if bad.size:
            raise _bad_counts(name(i + int(bad[0])), height, width, int(sums[bad[0]]), False)
        ones = pos % 2 == 1
        areas[i:j] = np.bincount(mask_idx[ones], weights=cnt[ones], minlength=j - i).astype(np.int64)
    return areas


def rles_contain(counts: Sequence[str | bytes], height: int, width: int, y: int, x: int) -> np.ndarray:
    """(N,) bool: which of these masks (checked first: rle_summaries) hold pixel (y, x), read off
    the run lengths: the pixel's column-major index falls in a 1-run. No mask is decoded."""
    parts = _as_bytes(counts)
    flat = x * height + y
    out = np.zeros(len(parts), dtype=bool)
    for i, j in _groups(parts):
        if j == i + 1 and len(parts[i]) >= WINDOW_CHARS:  # one long string, window by window
            start, k = 0, 0
            for c in iter_counts(parts[i]):
                ends = start + np.cumsum(c)
                if ends.size and ends[-1] > flat:
                    out[i] = (k + int(np.searchsorted(ends, flat, side="right"))) % 2 == 1
                    break
                start, k = (int(ends[-1]) if ends.size else start), k + c.size
            continue
        cnt, mask_idx, pos = _many_counts(parts[i:j], None)
        cs = np.cumsum(cnt)
        first = pos == 0
        base = np.repeat(cs[first] - cnt[first], np.bincount(mask_idx, minlength=j - i))
        ends = cs - base
        hit = (ends - cnt <= flat) & (flat < ends) & (pos % 2 == 1)
        out[i + mask_idx[hit]] = True
    return out


def decode_rles(counts: Sequence[str | bytes], height: int, width: int, names: Sequence[str] | None = None) -> np.ndarray:
    """Many RLEs of one size -> (N, H, W) bool in one pass.

    All strings are parsed together (one frombuffer, one reduceat); the delta chains are undone
    with a segmented cumsum; the pixels come from one np.repeat. Memory is N*H*W bytes: callers
    that need one mask of many decode that one (lcd.masks.read.select_mask).
    """
    n = len(counts)
    if n == 0:
        return np.zeros((0, height, width), dtype=bool)
    cnt, mask_idx, pos = _many_counts(_as_bytes(counts), names)
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
