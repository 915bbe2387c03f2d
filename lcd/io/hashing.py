"""Content hashes of files and folders: what pins weights, inputs and photos in every record."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from lcd.errors import LcdError
from lcd.io import storage

_HASH_CACHE: dict[tuple[str, int, int], str] = {}


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """SHA-256 of a regular file, memoised on (path, size, mtime) so repeated loads do not re-read
    GBs. A directory, FIFO or device is refused (reading a FIFO or /dev/zero would never end).
    A remote URL (s3://...) is hashed from its bytes, memoised on (URL, size, ETag or mtime)."""
    if storage.is_remote(path):
        return _sha256_remote(str(path), chunk)
    p = os.path.abspath(path)  # the memo key; realpath() cost more than the hash of a small cached file
    st = os.stat(p)
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file (FIFO, device or socket)"
        raise LcdError(f"{path}: {kind}; expected a file", item=str(path))
    key = (p, st.st_size, st.st_mtime_ns)
    if key not in _HASH_CACHE:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
        _HASH_CACHE[key] = h.hexdigest()
    return _HASH_CACHE[key]


def _sha256_remote(url: str, chunk: int) -> str:
    meta = storage.info(url)  # FileNotFoundError when absent, as for local files
    if meta.get("type") != "file":
        raise LcdError(f"{url}: not an object (a prefix?); expected a file", item=url)
    key = (url, int(meta.get("size") or 0), hash(str(meta.get("ETag") or meta.get("mtime") or meta.get("LastModified"))))
    if key not in _HASH_CACHE:
        h = hashlib.sha256()
        with storage.open_read(url) as f:
            while block := f.read(chunk):
                h.update(block)
        _HASH_CACHE[key] = h.hexdigest()
    return _HASH_CACHE[key]


def sha256_tree(root: str | Path) -> str:
    """Content hash of a folder: SHA-256 over sorted (relative path, file hash) lines."""
    root = Path(root)
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            p = Path(dirpath) / name
            h.update(f"{p.relative_to(root).as_posix()}\t{sha256_file(p)}\n".encode())
    return h.hexdigest()
