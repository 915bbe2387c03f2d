"""Content hashes of files and folders: what pins weights, inputs and photos in every record."""

from __future__ import annotations

import hashlib
import os
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from lcd.errors import LcdError
from lcd.io import storage
from lcd.io.config import IoConfig

# (absolute path or URL, size, stamp: mtime_ns for a file, ETag/mtime for an object) -> sha256
_HASH_CACHE: dict[tuple[str, int, str], str] = {}
_LOGS: list[set] = []  # open hash_log() scopes: each collects the memo keys used inside it


def _memo(key: tuple[str, int, str], compute) -> str:
    if key not in _HASH_CACHE:
        _HASH_CACHE[key] = compute()
    for used in _LOGS:
        used.add(key)
    return _HASH_CACHE[key]


def sha256_file(path: str | Path, chunk: int = 1 << 22, limits: IoConfig | None = None) -> str:
    """SHA-256 of a regular file, memoised on (path, size, mtime) so repeated loads do not re-read
    GBs. A directory, FIFO or device is refused (reading a FIFO or /dev/zero would never end).
    A remote URL (s3://...) is hashed from its bytes, memoised on (URL, size, ETag or mtime); an
    http(s) one is read within `limits` (the `io` section, lcd.io.http)."""
    if storage.is_remote(path):
        return _sha256_remote(str(path), chunk, limits)
    p = os.path.abspath(path)  # the memo key; realpath() cost more than the hash of a small cached file
    st = os.stat(p)
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file (FIFO, device or socket)"
        raise LcdError(f"{path}: {kind}; expected a file", item=str(path))
    def compute() -> str:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
        return h.hexdigest()
    return _memo((p, st.st_size, str(st.st_mtime_ns)), compute)


def _sha256_remote(url: str, chunk: int, limits: IoConfig | None) -> str:
    meta = storage.info(url, limits)  # FileNotFoundError when absent, as for local files
    if meta.get("type") != "file":
        raise LcdError(f"{url}: not an object (a prefix?); expected a file", item=url)
    def compute() -> str:
        h = hashlib.sha256()
        for block in storage.iter_bytes(url, limits, chunk):  # streamed: a large body is never held whole
            h.update(block)
        return h.hexdigest()
    return _memo((url, int(meta.get("size") or 0), str(meta.get("ETag") or meta.get("mtime") or meta.get("LastModified"))),
                 compute)


@contextmanager
def hash_log() -> Iterator[set]:
    """A scope collecting the memo keys of every file hashed (or found in the memo) inside it,
    in any thread: what one shard run used, for hash_rows."""
    used: set = set()
    _LOGS.append(used)
    try:
        yield used
    finally:
        # by identity: list.remove compares sets by value, and two shards' scopes in one process
        # (threads) may hold equal sets; removing the other's left it collecting, and this one's
        # later removal raised ValueError out of the shard
        for i, s in enumerate(_LOGS):
            if s is used:
                del _LOGS[i]
                break


def hash_rows(keys) -> list[dict]:
    """Memo entries as rows {path, size, stamp, sha256} (lcd.jobs.tables.HASHES_SCHEMA), sorted: kept
    beside a shard's results so that its next run trusts these hashes while a file's size and
    stamp are unchanged, instead of reading every input (and the model's weights) again. A
    rewrite that keeps size and mtime is not seen, as with DVC's own state."""
    return [{"path": k[0], "size": k[1], "stamp": k[2], "sha256": _HASH_CACHE[k]} for k in sorted(keys)]


def remember_hashes(rows) -> int:
    """Add rows of `hash_rows` (a previous run's) to the memo; -> rows added. A row is used only
    when a file's path, size and stamp all match it, so stale rows are harmless."""
    n = 0
    for r in rows:
        key = (r["path"], int(r["size"]), str(r["stamp"]))
        if key not in _HASH_CACHE:
            _HASH_CACHE[key] = r["sha256"]
            n += 1
    return n


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
