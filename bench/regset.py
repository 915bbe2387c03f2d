"""Regset benchmark: caption embedding throughput (tiny open_clip, CPU) and caption-filter time
for 100k and 1M synthetic captions (the filter should grow linearly with N).

    python bench/regset.py [--captions 2048] [--dim 64]

Prints progress lines, then one JSON object as the last line:
captions_per_s, filter_s_100k, filter_s_1m, filter_ratio_1m_100k, plus the settings used.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def bench_embed(n: int, batch_size: int) -> float:
    from lcd.models.loader import load_open_clip
    from lcd.models.tiny import write_tiny_open_clip
    from lcd.regset.embed import embed_texts

    with tempfile.TemporaryDirectory() as tmp:
        clip = load_open_clip(write_tiny_open_clip(Path(tmp) / "open_clip"))
        rng = np.random.default_rng(0)
        words = ["dog", "photo", "of", "a", "cute", "puppy", "in", "the", "park", "running", "grass", "small"]
        caps = [" ".join(rng.choice(words, size=rng.integers(3, 15))) for _ in range(n)]
        embed_texts(clip, caps[:batch_size], batch_size)  # warm-up
        t0 = time.perf_counter()
        embed_texts(clip, caps, batch_size)
        return n / (time.perf_counter() - t0)


def synthetic(n: int, dim: int, seed: int = 0):
    """(n, dim) embeddings whose cosines to e0 spread over [-1, 1] (about 23% above 0.85),
    URLs with 1% repeats, captions with 1% repeats."""
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((n, dim), dtype=np.float32)
    emb[:, 0] = rng.uniform(-3.0, 3.0, size=n).astype(np.float32) * np.sqrt(dim)
    q = np.zeros(dim, np.float32)
    q[0] = 1.0
    ids = np.arange(n)
    ids[rng.random(n) < 0.01] = 0
    urls = [f"https://img.example/{i}.jpg" for i in ids]
    caps = [f"a photo of dog number {i}" for i in ids[::-1]]
    return emb, q, urls, caps


def bench_filter(n: int, dim: int, top_n: int, repeats: int = 3) -> tuple[float, int]:
    from lcd.regset.filter import cosine_similarity, select_captions

    emb, q, urls, caps = synthetic(n, dim)
    best, above = float("inf"), 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        sel = select_captions(cosine_similarity(emb, q), urls, caps, threshold=0.85, top_n=top_n)
        best = min(best, time.perf_counter() - t0)
        above = sel.above
    return best, above


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--captions", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--top-n", type=int, default=200)
    args = ap.parse_args()
    cps = bench_embed(args.captions, args.batch_size)
    print(f"embed: {cps:.0f} captions/s ({args.captions} captions, batch {args.batch_size})", flush=True)
    f100k, a100k = bench_filter(100_000, args.dim, args.top_n)
    print(f"filter 100k: {f100k:.3f} s ({a100k} above threshold)", flush=True)
    f1m, a1m = bench_filter(1_000_000, args.dim, args.top_n)
    print(f"filter 1M: {f1m:.3f} s ({a1m} above threshold)", flush=True)
    print(json.dumps({
        "captions_per_s": round(cps, 1), "filter_s_100k": round(f100k, 4), "filter_s_1m": round(f1m, 4),
        "filter_ratio_1m_100k": round(f1m / f100k, 2), "above_100k": a100k, "above_1m": a1m,
        "dim": args.dim, "top_n": args.top_n, "threshold": 0.85, "model": "tiny open_clip (LCD-Tiny-ViT), CPU",
        "torch_threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
