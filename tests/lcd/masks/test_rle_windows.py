"""RLE counts parsed window by window: the same counts, areas and pixels as one pass, and hostile
strings (negative runs, numbers past 64 bits, sums off by one) refused before a pixel is made."""

import numpy as np
import pytest

import lcd.masks.rle as rle
from lcd.errors import LcdError
from lcd.masks.rle import (counts_to_string, decode_rle, encode_rle, iter_counts, rle_summaries, rle_summary,
                           rles_contain, run_lengths)


def _masks(seed=0, n=40):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        h, w = (int(v) for v in rng.integers(1, 60, 2))
        m = rng.random((h, w)) < rng.random()
        m[: h // 3, : w // 2] = True  # long runs too: multi-character and negative deltas
        yield m


@pytest.mark.parametrize("window", [16, 64, 1 << 18])
def test_windows_give_the_counts_areas_and_pixels_of_one_pass(monkeypatch, window):
    monkeypatch.setattr(rle, "WINDOW_CHARS", window)
    for m in _masks():
        h, w = m.shape
        s = encode_rle(m)["counts"]
        assert np.array_equal(np.concatenate(list(iter_counts(s)) or [np.zeros(0, np.int64)]), run_lengths(m))
        assert rle_summary(s, h, w) == (len(run_lengths(m)), int(m.sum()))
        assert np.array_equal(decode_rle({"size": [h, w], "counts": s}), m)
    h, w = 23, 31
    ms = np.random.default_rng(2).random((30, h, w)) < 0.4
    ms[3] = False
    ms[4] = True
    counts = [encode_rle(m)["counts"] for m in ms]
    assert np.array_equal(rle_summaries(counts, h, w), ms.sum(axis=(1, 2)))
    for y, x in ((0, 0), (h - 1, w - 1), (11, 17)):
        assert np.array_equal(rles_contain(counts, h, w, y, x), ms[:, y, x])


def test_hostile_counts_are_refused_with_their_reason():
    n = 4 * 5
    with pytest.raises(LcdError, match=r"m: RLE has a negative run length"):
        rle_summary(counts_to_string(np.array([n + 3, -3])), 4, 5, "m")
    with pytest.raises(LcdError, match=r"m: RLE counts sum to 19 but size is 4x5=20"):
        decode_rle({"size": [4, 5], "counts": counts_to_string(np.array([19]))}, "m")
    with pytest.raises(LcdError, match=r"m: bad RLE counts: .*number longer than 8 characters"):
        rle_summary("o" * 30 + "0", 4, 5, "m")  # would shift past 64 bits and wrap to any value
    with pytest.raises(LcdError, match=r"#7: RLE has a negative run length"):
        rle_summaries([counts_to_string(np.array([n]))] * 7 + [counts_to_string(np.array([n + 1, -1]))], 4, 5,
                      names=lambda i: f"#{i}")
    with pytest.raises(LcdError, match=r"b: bad RLE counts: .*outside ASCII"):
        rle_summaries([counts_to_string(np.array([n])), "~~"], 4, 5, names=["a", "b"])


def test_a_long_string_costs_window_sized_memory(monkeypatch):
    """A 2M-character counts string (a 1-pixel checkerboard of 1 MP) is summarised with arrays of
    the window's size, not the string's (each char became ~10 int64 arrays of its length)."""
    import tracemalloc

    h, w = 1000, 1000
    flat = np.zeros(h * w, bool)
    flat[::2] = True  # column-major: every other pixel, a million runs
    m = flat.reshape((h, w), order="F")
    s = encode_rle(m)["counts"]
    assert len(s) >= 1_000_000
    tracemalloc.start()
    try:
        runs, area = rle_summary(s, h, w)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (runs, area) == (h * w + 1, h * w // 2)
    assert peak < 40e6, peak / 1e6  # one pass over the whole string needed ~80 MB
