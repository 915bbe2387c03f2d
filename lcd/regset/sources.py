"""Candidate (url, caption) pairs: LAION-style metadata Parquet shards, or a `clip back` backend.

Shards may be a local file, a folder of *.parquet, a glob, or any fsspec URL (an http(s) one
read within the `io` section's deadlines and byte limit, lcd.io.http); each is read once into memory and hashed (SHA-256 of its bytes), the hash keying its embedding cache entry. A
`clip back` is queried with clip-retrieval's own ClipClient in text modality, so its answers
carry the caption-to-prompt cosine the metadata path computes locally.
"""

from __future__ import annotations

import glob
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lcd.errors import LcdError
from lcd.io.config import IoConfig


@dataclass(frozen=True)
class Shard:
    """One metadata shard: where it came from, its content hash, and its non-null rows."""

    name: str
    sha256: str
    urls: list[str]
    captions: list[str]
    dropped: int  # rows with a null/empty url or caption


@dataclass(frozen=True)
class Candidates:
    """Flattened candidates. `similarity` (N,) float32 is set when the source scored them."""

    urls: list[str]
    captions: list[str]
    shard: list[str]
    similarity: np.ndarray | None = None


def expand_shards(specs: list[str]) -> list[str]:
    """Shard specs -> sorted shard locations (folders and globs expanded; URLs kept)."""
    if not specs:
        raise LcdError("regset.shards is empty: give metadata Parquet files, folders or URLs", item="shards")
    out: list[str] = []
    for spec in specs:
        if "://" in spec and not spec.startswith("file://"):
            out.append(spec)
            continue
        local = spec.removeprefix("file://")
        p = Path(local)
        if p.is_dir():
            found = sorted(str(x) for x in p.glob("*.parquet"))
        elif any(ch in local for ch in "*?["):
            found = sorted(glob.glob(local))
        else:
            found = [local] if p.exists() else []
        if not found:
            raise LcdError(f"{spec}: no metadata Parquet shard found", item=spec)
        out.extend(found)
    return out


def _read_bytes(location: str, limits: IoConfig | None = None) -> bytes:
    """A shard's bytes; a URL that hangs, breaks or names nothing is one LcdError naming it."""
    if "://" in location:
        from lcd.io import storage

        try:
            return storage.read_bytes(location, limits)
        except FileNotFoundError:
            raise LcdError(f"{location}: cannot read shard: not found", item=location) from None
        except LcdError as e:  # lcd.io.http / storage: the URL and what happened, one line
            raise LcdError(f"cannot read shard {e}", item=location) from None
    return Path(location).read_bytes()


def read_shard(location: str, url_col: str = "url", caption_col: str = "caption",
               limits: IoConfig | None = None) -> Shard:
    """Read one Parquet shard's url and caption columns. Missing columns name the shard. A URL
    is read within `limits` (the `io` section)."""
    import pyarrow.parquet as pq

    data = _read_bytes(location, limits)
    try:
        table = pq.read_table(io.BytesIO(data))
    except Exception as e:
        raise LcdError(f"{location}: not a Parquet file: {type(e).__name__}: {e}", item=location) from None
    missing = [c for c in (url_col, caption_col) if c not in table.column_names]
    if missing:
        raise LcdError(
            f"{location}: missing column(s) {missing} (has {table.column_names}); set regset.url_col/caption_col",
            item=location,
        )
    urls, caps = table.column(url_col).to_pylist(), table.column(caption_col).to_pylist()
    keep = [i for i, (u, c) in enumerate(zip(urls, caps)) if u and c and str(c).strip()]
    return Shard(
        name=location, sha256=hashlib.sha256(data).hexdigest(),
        urls=[str(urls[i]) for i in keep], captions=[str(caps[i]) for i in keep],
        dropped=len(urls) - len(keep),
    )


def query_clip_back(backend_url: str, index: str, prompt: str, num_results: int,
                    limits: IoConfig | None = None) -> Candidates:
    """Ask a clip-retrieval backend for the captions nearest to `prompt` (text modality), within
    `limits.http_total_timeout_s` (ClipClient's own timeout is an hour per read).

    Embedding-based dedupe, safety and aesthetic re-weighting are off so the backend returns
    raw caption cosines; our own filter then applies threshold, dedupe and top-N.
    """
    import requests
    from clip_retrieval.clip_client import ClipClient, Modality

    from lcd.io.http import call_within

    client = ClipClient(
        url=backend_url, indice_name=index, modality=Modality.TEXT, num_images=num_results,
        deduplicate=False, use_safety_model=False, use_violence_detector=False, aesthetic_weight=0.0,
    )
    try:
        results = call_within(lambda: client.query(text=prompt), limits, backend_url)
    except LcdError:
        raise
    except (requests.RequestException, ValueError) as e:
        raise LcdError(f"{backend_url}: clip back query failed: {type(e).__name__}: {e}", item=backend_url) from None
    if isinstance(results, dict):  # the backend answers errors as a JSON object
        raise LcdError(f"{backend_url}: clip back answered {results}", item=backend_url)
    rows = [r for r in results if r.get("url") and r.get("caption")]
    return Candidates(
        urls=[str(r["url"]) for r in rows],
        captions=[str(r["caption"]) for r in rows],
        shard=[f"{backend_url}#{index}"] * len(rows),
        similarity=np.asarray([float(r["similarity"]) for r in rows], dtype=np.float32),
    )
