"""COCO RLE: bit-exact round trip, identical to pycocotools both ways, batch decode = single."""

import numpy as np
import pytest
from pycocotools import mask as coco

from lcd.errors import LcdError
from lcd.masks.rle import decode_rle, decode_rles, encode_rle, rle_area, string_to_counts


def _cases():
    rng = np.random.default_rng(0)
    yield np.zeros((5, 7), bool)
    yield np.ones((5, 7), bool)
    yield np.ones((1, 1), bool)
    yield np.zeros((1, 1), bool)
    for _ in range(60):
        h, w = rng.integers(1, 50, 2)
        yield rng.random((h, w)) < rng.random()
    big = np.zeros((700, 900), bool)  # long runs -> multi-char and negative deltas
    big[3:690, 5:880] = True
    big[0, 0] = True
    yield big


def test_round_trip_is_bit_exact_and_matches_pycocotools():
    for m in _cases():
        r = encode_rle(m)
        ref = coco.encode(np.asfortranarray(m.astype(np.uint8)))
        assert r["counts"].encode() == ref["counts"]
        assert r["size"] == list(ref["size"])
        back = decode_rle(r)
        assert back.dtype == bool and back.shape == m.shape and np.array_equal(back, m)
        assert np.array_equal(coco.decode({"size": r["size"], "counts": r["counts"].encode()}), m)
        assert rle_area(r) == int(m.sum()) == int(coco.area(ref))


def test_batch_decode_equals_single_decode():
    rng = np.random.default_rng(1)
    ms = rng.random((12, 33, 21)) < 0.3
    ms[0] = False
    ms[1] = True
    ms[2, 5:20, 3:9] = True
    got = decode_rles([encode_rle(m)["counts"] for m in ms], 33, 21)
    assert got.shape == (12, 33, 21) and np.array_equal(got, ms)
    assert decode_rles([], 4, 4).shape == (0, 4, 4)


def test_decode_of_pycocotools_strings():
    m = np.zeros((40, 30), bool)
    m[10:35, 2:29] = True
    s = coco.encode(np.asfortranarray(m.astype(np.uint8)))["counts"]
    assert np.array_equal(decode_rle({"size": [40, 30], "counts": s}), m)
    counts = string_to_counts(s)
    assert counts[:4].tolist() == [2 * 40 + 10, 25, 15, 25] and counts.sum() == 40 * 30


def test_counts_that_do_not_fill_the_size_are_an_error():
    r = encode_rle(np.ones((4, 4), bool))
    with pytest.raises(LcdError, match="sum to 16 .* 5x4"):
        decode_rle({"size": [5, 4], "counts": r["counts"]})
    with pytest.raises(LcdError, match=r"m#0: RLE counts sum to 16 but size is 4x5"):
        decode_rles([r["counts"]], 4, 5, names=["m#0"])


def test_malformed_strings_are_errors():
    with pytest.raises(LcdError, match="outside ASCII 48..111"):
        decode_rle({"size": [2, 2], "counts": "0~"})
    with pytest.raises(LcdError, match="ends inside a number"):
        decode_rle({"size": [2, 2], "counts": "0P"})  # 'P' = 48+32: continuation bit set, then nothing
    with pytest.raises(LcdError, match="empty or ends inside a number"):
        decode_rles(["", "4"], 2, 2)


def test_encode_refuses_non_2d():
    with pytest.raises(LcdError, match=r"2-D \(H, W\), got shape \(2, 3, 4\)"):
        encode_rle(np.zeros((2, 3, 4), bool))
