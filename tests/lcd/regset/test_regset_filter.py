"""Caption filter on embeddings we control: threshold is strict, top-N is by similarity, dedupe."""

from __future__ import annotations

import numpy as np
import pytest

from lcd.errors import LcdError
from lcd.regset.filter import caption_key, cosine_similarity, select_captions


def _embeddings_with_cosines(cosines, dim=8, seed=0):
    """Unit rows whose cosine with e0 is exactly `cosines` (second coordinate takes the rest)."""
    rng = np.random.default_rng(seed)
    c = np.asarray(cosines, dtype=np.float64)
    emb = np.zeros((len(c), dim))
    emb[:, 0] = c
    emb[:, 1] = np.sqrt(1 - c**2)
    emb *= rng.uniform(0.5, 3.0, size=(len(c), 1))  # unnormalised on purpose
    q = np.zeros(dim)
    q[0] = 2.0
    return emb, q


def test_cosine_similarity_recovers_constructed_cosines():
    cos = [0.99, 0.86, 0.85, 0.5, -0.2]
    emb, q = _embeddings_with_cosines(cos)
    np.testing.assert_allclose(cosine_similarity(emb, q), cos, atol=1e-6)


def test_cosine_similarity_shape_error():
    with pytest.raises(LcdError, match=r"embeddings must be \(N, D\)"):
        cosine_similarity(np.zeros((3, 4)), np.zeros(5))


def test_threshold_is_strict_and_order_is_by_similarity():
    cos = np.array([0.86, 0.95, 0.85, 0.9, 0.84, 0.99], dtype=np.float32)
    urls = [f"u{i}" for i in range(6)]
    caps = [f"c{i}" for i in range(6)]
    sel = select_captions(cos, urls, caps, threshold=0.85, top_n=200)
    assert sel.indices.tolist() == [5, 1, 3, 0]  # 0.85 itself is not "> 0.85"
    assert sel.above == 4 and sel.duplicates == 0
    assert np.all(np.diff(sel.similarity) <= 0)


def test_top_n_keeps_the_most_similar():
    rng = np.random.default_rng(1)
    cos = rng.uniform(0.86, 1.0, size=1000).astype(np.float32)
    urls = [f"u{i}" for i in range(1000)]
    caps = [f"c{i}" for i in range(1000)]
    sel = select_captions(cos, urls, caps, threshold=0.85, top_n=200)
    assert len(sel.indices) == 200
    assert set(sel.indices.tolist()) == set(np.argsort(-cos)[:200].tolist())
    assert sel.similarity.min() >= np.sort(cos)[-200]


def test_dedupe_urls_and_captions_before_the_cut():
    cos = np.array([0.99, 0.98, 0.97, 0.96, 0.95], dtype=np.float32)
    urls = ["a", "a", "b", "c", "d"]  # 1 repeats the URL of 0
    caps = ["A dog", "x", "a  DOG ", "y", "z"]  # 2 repeats the caption of 0 up to case/space
    sel = select_captions(cos, urls, caps, threshold=0.85, top_n=3)
    assert sel.indices.tolist() == [0, 3, 4]  # duplicates did not take top-3 slots
    assert sel.duplicates == 2


def test_ties_keep_input_order():
    cos = np.full(5, 0.9, dtype=np.float32)
    sel = select_captions(cos, list("abcde"), list("vwxyz"), threshold=0.85, top_n=3)
    assert sel.indices.tolist() == [0, 1, 2]


def test_nothing_above_threshold_is_an_empty_selection():
    sel = select_captions(np.array([0.1, 0.2], np.float32), ["a", "b"], ["x", "y"], threshold=0.85, top_n=5)
    assert sel.indices.size == 0 and sel.above == 0


def test_select_errors():
    with pytest.raises(LcdError, match="one entry per candidate"):
        select_captions(np.zeros(3, np.float32), ["a"], ["x", "y", "z"], threshold=0.5, top_n=2)
    with pytest.raises(LcdError, match="top_n must be >= 1"):
        select_captions(np.zeros(1, np.float32), ["a"], ["x"], threshold=0.5, top_n=0)


def test_caption_key():
    assert caption_key("  A\tPhoto  of a Dog\n") == caption_key("a photo of a dog")
