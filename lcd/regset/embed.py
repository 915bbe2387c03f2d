"""Batched CLIP text embeddings of captions, cached on disk by (shard hash, model hash, column).

Implementation: open_clip directly, not clip-retrieval's `clip inference`. Why: `clip inference`
is file-oriented (it reads an image/caption folder or webdataset and writes numbered .npy
partitions through its runner), with no call that takes a caption column in memory; caching per
shard and batching captions out of Parquet is a few lines with open_clip. It is the same model
code either way: clip-retrieval loads `open_clip:ARCH/weights` through all_clip, which calls
`open_clip.create_model_and_transforms` and `encode_text` then L2-normalises — exactly what
`embed_texts` does — so similarities here equal those a `clip back` over the same weights
returns. `clip inference` is used where it fits, to embed an image collection for the
self-hosted index (lcd/regset/index.py).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lcd.io.atomic import atomic_path
from lcd.models.loader import LoadedOpenClip
from lcd.regset.filter import normalize_rows
from lcd.progress import Progress


@torch.no_grad()
def embed_texts(clip: LoadedOpenClip, texts: list[str], batch_size: int = 256) -> np.ndarray:
    """Texts -> (N, D) float32 L2-normalised open_clip text embeddings, in batches of batch_size.
    Texts longer than the context (77 tokens) are truncated by the tokenizer, as in CLIP."""
    model = clip.model
    device = next(model.parameters()).device
    dim = int(model.text_projection.shape[1]) if getattr(model, "text_projection", None) is not None else None
    out = []
    progress = Progress("regset embed captions", len(texts), unit="captions") if len(texts) > batch_size else None
    for start in range(0, len(texts), batch_size):
        tokens = clip.tokenizer([str(t) for t in texts[start:start + batch_size]]).to(device)
        out.append(model.encode_text(tokens).float().cpu().numpy())
        if progress is not None:
            progress.advance(len(tokens))
    if progress is not None:
        progress.close()
    if not out:
        return np.zeros((0, dim or 0), dtype=np.float32)
    return normalize_rows(np.concatenate(out))


@torch.no_grad()
def embed_images(clip: LoadedOpenClip, images: list, batch_size: int = 64) -> np.ndarray:
    """PIL images -> (N, D) float32 L2-normalised open_clip image embeddings."""
    device = next(clip.model.parameters()).device
    out = []
    for start in range(0, len(images), batch_size):
        batch = torch.stack([clip.preprocess(im) for im in images[start:start + batch_size]]).to(device)
        out.append(clip.model.encode_image(batch).float().cpu().numpy())
    return normalize_rows(np.concatenate(out)) if out else np.zeros((0, 0), dtype=np.float32)


@dataclass
class EmbeddingCache:
    """Embeddings stored as `<dir>/<key>.npy`, key = sha256(content hash, model hash, column).

    `hits` / `misses` count lookups and `embedded` counts texts run through the model, so a
    caller (and a test) can see that a second run with the same inputs embeds nothing.
    """

    root: Path
    hits: int = 0
    misses: int = 0
    embedded: int = 0
    keys: list[str] = field(default_factory=list)

    @staticmethod
    def key(content_sha256: str, clip: LoadedOpenClip, column: str) -> str:
        model = clip.source.sha256 or f"{clip.source.ref}@{clip.source.revision}"
        return hashlib.sha256(f"{content_sha256}\n{model}\n{column}".encode()).hexdigest()

    def get_or_embed(
        self, content_sha256: str, texts: list[str], clip: LoadedOpenClip, column: str, batch_size: int = 256
    ) -> np.ndarray:
        """(N, D) float32 embeddings of `texts`, read from the cache or computed and saved."""
        key = self.key(content_sha256, clip, column)
        self.keys.append(key)
        path = Path(self.root) / f"{key}.npy"
        if path.exists():
            emb = np.load(path)
            if emb.shape[0] == len(texts):
                self.hits += 1
                return emb
        self.misses += 1
        emb = embed_texts(clip, texts, batch_size)
        self.embedded += len(texts)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:  # np.save on a name would append ".npy" to the temp file
                np.save(f, emb)
        return emb


def texts_sha256(texts: list[str]) -> str:
    """Content hash of a list of texts (for things that are not shard files, like the prompt)."""
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    return h.hexdigest()
