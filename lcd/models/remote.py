"""Model weights at a URL: a single checkpoint file or a diffusers folder (a prefix) on object
storage (`s3://bucket/models/sd15`, `s3://bucket/sam/sam_vit_h_4b8939.pth`, or one file over
https), fetched once per machine into the fetch cache (lcd.io.cache), then loaded offline by the
usual loaders from the local copy, after the same trust check as any local folder.

Why: GPU workers that share only a bucket cannot each be handed a local path or a hub id that
needs the internet; the weights live beside the data. The cache keys each object by its URL,
ETag and size, so a worker's second shard fetches nothing (one listing or HEAD), a re-uploaded
file is fetched again, and a copy written over on disk is re-hashed and fetched again.

A model's pin for output hashes (`url_pin`) is read off the listing (names, ETags, sizes), not
off the bytes, so deciding whether outputs are current fetches no weights; the ModelSource of a
loaded model still carries the sha256 of the bytes read, with the URL as its ref.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from lcd.errors import LcdError, ModelLoadError
from lcd.io import cache, storage
from lcd.io.config import IoConfig


def is_url(ref: object) -> bool:
    """True for a reference at a remote URL (s3://, https://, ...); not for file:// or paths."""
    return ref is not None and storage.is_remote(str(ref))


WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".bin", ".pt", ".pth", ".msgpack", ".onnx", ".h5")


def loaded_subset(listing: dict[str, dict]) -> dict[str, dict]:
    """Of a diffusers pipeline folder's objects (it has model_index.json), what loading it may
    read: not the single-file checkpoints at its top (SD1.5's repository holds 4-7 GB of them
    beside the components) nor the weights of components lcd never loads (safety checker,
    feature extractor: lcd.models.layout.NOT_LOADED); their configs stay, for the trust check.
    Any other folder: all of it."""
    from lcd.models.layout import NOT_LOADED

    if "model_index.json" not in listing:
        return listing
    return {rel: m for rel, m in listing.items() if not rel.endswith(WEIGHT_SUFFIXES)
            or ("/" in rel and rel.split("/", 1)[0] not in NOT_LOADED)}


def _listing(ref: str, limits: IoConfig | None) -> dict[str, dict] | None:
    """The folder's objects to fetch (loaded_subset), or None when `ref` names one object."""
    if cache.object_info(ref, limits).get("type") != "directory":
        return None
    return loaded_subset(cache.folder_listing(ref, limits))


def fetch_model(ref: str, limits: IoConfig | None = None) -> Path:
    """The local copy of the weights at `ref`: a file (its own name kept, so `.safetensors` /
    `.ckpt` still say what it is) or a folder (what loading it reads: loaded_subset). ModelLoadError,
    one line naming the URL, when it cannot be fetched (absent, over io.fetch_max_bytes, a hostile
    name, a broken transfer)."""
    try:
        listing = _listing(str(ref), limits)
        if listing is None:
            return cache.fetch_file(str(ref), limits)
        return cache.fetch_folder(str(ref), limits, listing=listing)
    except LcdError as e:
        raise ModelLoadError(str(e), item=str(ref)) from None


def localize(ref: str | Path | None, limits: IoConfig | None = None) -> str | None:
    """`ref` as a local path string when it is a URL (fetched), else unchanged."""
    return str(fetch_model(str(ref), limits)) if is_url(ref) else (None if ref is None else str(ref))


def with_url(source, url: str):
    """A ModelSource of the local copy, renamed to the URL it was fetched from."""
    return dataclasses.replace(source, ref=url)


def url_pin(ref: str, limits: IoConfig | None = None) -> str:
    """A pin of the weights at `ref` without reading them: `url:<sha256>` over the object's (or
    the loaded objects under the prefix's: loaded_subset) name, ETag and size. A changed object
    changes it."""
    try:
        listing = _listing(ref, limits)
        return "url:" + cache.folder_key(ref, listing if listing is not None else {"": cache.object_info(ref, limits)})
    except LcdError as e:
        raise ModelLoadError(str(e), item=ref) from None
