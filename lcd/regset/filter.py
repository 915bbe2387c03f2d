"""Caption filter, pure numpy: cosine similarity to the class prompt, threshold, dedupe, top-N.

Cost is one (N, D) x (D,) product plus a sort of only the captions above the threshold, so the
time grows linearly with N for a fixed pass rate (bench/regset.py measures 100k vs 1M).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from lcd.errors import LcdError

_SPACES = re.compile(r"\s+")


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """L2-normalise rows of a float (N, D) array (zero rows stay zero) -> float32 (N, D)."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def cosine_similarity(embeddings: np.ndarray, query: np.ndarray) -> np.ndarray:
    """(N, D) caption embeddings, (D,) prompt embedding -> (N,) float32 cosines in [-1, 1]."""
    if embeddings.ndim != 2 or query.ndim != 1 or embeddings.shape[1] != query.shape[0]:
        raise LcdError(
            f"embeddings must be (N, D) and query (D,), got {embeddings.shape} and {query.shape}",
            item="embeddings",
        )
    return normalize_rows(embeddings) @ normalize_rows(query[None])[0]


def caption_key(caption: str) -> str:
    """Captions equal up to case and whitespace are duplicates."""
    return _SPACES.sub(" ", caption).strip().casefold()


@dataclass(frozen=True)
class Selection:
    """Indices into the candidate arrays, best first, with their similarities.

    `above` counts candidates over the threshold, `duplicates` those of them dropped because an
    earlier (more similar) one had the same URL or caption.
    """

    indices: np.ndarray  # (K,) int64, K <= top_n
    similarity: np.ndarray  # (K,) float32, non-increasing
    above: int
    duplicates: int


def select_captions(
    similarity: np.ndarray, urls: list[str], captions: list[str], *, threshold: float, top_n: int
) -> Selection:
    """Keep similarity > threshold, most similar first (ties: earlier candidate first), drop
    repeated URLs and captions, stop at top_n. Dedupe happens before the cut, so duplicates
    never take a slot."""
    sim = np.asarray(similarity, dtype=np.float32)
    if sim.ndim != 1 or len(urls) != len(sim) or len(captions) != len(sim):
        raise LcdError(
            f"similarity, urls and captions must have one entry per candidate, got "
            f"{sim.shape}, {len(urls)}, {len(captions)}", item="candidates",
        )
    if top_n < 1:
        raise LcdError(f"top_n must be >= 1, got {top_n}", item="top_n")
    above = np.flatnonzero(sim > threshold)
    order = above[np.argsort(-sim[above], kind="stable")]
    seen_urls: set[str] = set()
    seen_caps: set[str] = set()
    keep: list[int] = []
    dups = 0
    for i in order:
        u, c = urls[i], caption_key(captions[i])
        if u in seen_urls or c in seen_caps:
            dups += 1
            continue
        seen_urls.add(u)
        seen_caps.add(c)
        keep.append(int(i))
        if len(keep) == top_n:
            break
    idx = np.asarray(keep, dtype=np.int64)
    return Selection(indices=idx, similarity=sim[idx], above=int(above.size), duplicates=dups)
