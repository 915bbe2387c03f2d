"""A per-machine fetch cache: an object (or a folder of objects) at a URL, fetched once, kept on
local disk, and handed to readers that need a local path (diffusers, safetensors, torch.load).

Why: workers that share nothing but a bucket must each load model weights and concept folders
from it, and a shard reloads them per concept group; a fetch per load would move gigabytes per
shard. Here the second use on a machine costs one HEAD (a folder: one listing) and no GET.

Layout under the cache folder (`io.cache_dir`, else `$LCD_CACHE`, else `~/.cache/lcd`):

    fetch/objects/<kk>/<key>/<name>   the object's bytes, read-only, under its own file name
                                      (a loader tells `.safetensors` from `.ckpt` by it)
    fetch/objects/<kk>/<key>.json     url, ETag, size, sha256 (and md5) of those bytes, stamp
    fetch/folders/<key>/...           a fetched folder: hard links to its objects' files
    fetch/folders/<key>.json          each file's sha256 and stamp

`key` = sha256 of (URL, ETag, size) of the object, or of the folder's URL and every object's
(relative name, ETag, size): a changed object has a new ETag, so a new key, and is fetched
again; an unchanged one is a hit. An object whose store sends neither ETag nor Last-Modified
cannot be checked for changes: it is fetched again on every use, over its one entry (never a
stale hit).

Verified: the bytes read must be the listed size, match `sha256` when the caller knows it, and
match the ETag when S3 sends a plain MD5 one (a single-part upload). A hit trusts the file when
its stamp (inode, size, mtime) is the one recorded; any other stamp (a file written over) has its
sha256 recomputed, and a mismatch fetches it again. Atomic: bytes go to a temp file, renamed into
place; the `.json` is written last and is the done marker. Two processes: an flock per key, so
the second waits for the first's fetch (at most `io.fetch_timeout_s`) and then reads its copy.
Bounded: `io.fetch_max_bytes` per object and per folder (refused before any GET), `fetch_max_files`
per folder, `fetch_timeout_s` per object. Every failure: one NetworkError line naming the URL.
The cache only grows; remove `fetch/` to reclaim its space (no process may be reading it).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

from lcd.errors import NetworkError
from lcd.io import http, storage
from lcd.io.config import IoConfig
from lcd.io.urls import check_fetch_url, check_relative_name

CACHE_ENV = "LCD_CACHE"
CHUNK = 1 << 25  # 32 MiB per read (a ranged GET on object storage): ~100 for SD1.5's 3.4 GB UNet
THREADS = 8  # objects of one folder fetched at once (a diffusers folder holds ~15)
MD5_ETAG = re.compile(r'^"?([0-9a-f]{32})"?$')
# what this process did, for benchmarks and logs: hits, fetched objects, bytes fetched
STATS: Counter = Counter()


def cache_root(limits: IoConfig | None = None) -> Path:
    """The cache folder: `limits.cache_dir`, else `$LCD_CACHE`, else `~/.cache/lcd`."""
    configured = limits.cache_dir if limits is not None else None
    return Path(configured or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "lcd").expanduser()


def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _stamp(p: Path) -> str:
    st = os.lstat(p)
    return f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


def _object_version(meta: dict) -> str | None:
    """What changes with an object's content: its ETag, else its modification time; None if neither."""
    v = meta.get("ETag") or meta.get("LastModified") or meta.get("mtime") or meta.get("last_modified")
    return str(v) if v else None


def _read_meta(p: Path) -> dict | None:
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def _write_meta(p: Path, meta: dict) -> None:
    tmp = p.with_name(f".{p.name}.{secrets.token_hex(4)}.tmp")
    tmp.write_text(json.dumps(meta, sort_keys=True))
    os.replace(tmp, p)


@contextlib.contextmanager
def locked(lock: Path, url: str, limits: IoConfig) -> Iterator[None]:
    """An exclusive flock on `lock`, waited for at most `limits.fetch_timeout_s` (another process
    fetching the same key holds it for as long as its fetch takes)."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+") as f:
        deadline = time.monotonic() + limits.fetch_timeout_s
        while True:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() > deadline:
                    raise NetworkError(f"{url}: another process has been fetching it for over "
                                       f"{limits.fetch_timeout_s:g} s (io.fetch_timeout_s)", item=url) from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _blocks(url: str, limits: IoConfig) -> Iterator[bytes]:
    """The object's bytes in blocks: http(s) through lcd.io.http (its deadlines, the fetch's
    byte limit), other stores through fsspec; a store's exception becomes one NetworkError."""
    if http.is_http(url):
        wide = limits.model_copy(update={"http_max_bytes": limits.fetch_max_bytes,
                                         "http_total_timeout_s": limits.fetch_timeout_s})
        yield from http.iter_body(url, wide, CHUNK)
        return
    fs, path = storage.filesystem(url)
    fs.invalidate_cache(path)  # s3fs reads with If-Match on the ETag it holds: the current one, not a stale listing's
    f = storage._guarded(url, lambda: fs.open(path, "rb", block_size=CHUNK, cache_type="none"))
    with f:
        while block := storage._guarded(url, lambda: f.read(CHUNK)):
            yield block


def _download(url: str, dest: Path, size: int | None, limits: IoConfig) -> dict:
    """Stream `url` into `dest` (fsynced), hashing it; -> {sha256, md5, size}. Refused: more bytes
    than listed or than io.fetch_max_bytes, fewer than listed, or over io.fetch_timeout_s."""
    t0, cap = time.monotonic(), limits.fetch_max_bytes
    sha, md5, got = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0
    with open(dest, "wb") as out:
        for block in _blocks(url, limits):
            got += len(block)
            if got > cap or (size is not None and got > size):
                raise NetworkError(f"{url}: more than {min(cap, size or cap):,} bytes "
                                   f"({'its listed size' if size is not None and size < cap else 'io.fetch_max_bytes'})",
                                   item=url)
            if time.monotonic() - t0 > limits.fetch_timeout_s:
                raise NetworkError(f"{url}: fetch exceeded {limits.fetch_timeout_s:g} s ({got:,} bytes read; "
                                   "io.fetch_timeout_s)", item=url)
            sha.update(block), md5.update(block), out.write(block)
        out.flush()
        os.fsync(out.fileno())
    if size is not None and got != size:
        raise NetworkError(f"{url}: connection closed after {got:,} of {size:,} bytes", item=url)
    STATS["fetched"] += 1
    STATS["bytes"] += got
    return {"sha256": sha.hexdigest(), "md5": md5.hexdigest(), "size": got}


def object_info(url: str, limits: IoConfig | None = None) -> dict:
    """The store's listing entry of one object (size, ETag or mtime, type): NetworkError naming
    the URL when it is absent or not readable."""
    url = check_fetch_url(url)
    if not http.is_http(url):  # the store's answer now, not a listing s3fs kept from before
        fs, path = storage.filesystem(url)
        fs.invalidate_cache(path)
    try:
        return storage.info(url, limits)
    except FileNotFoundError as e:
        raise NetworkError(f"{url}: {storage.not_found_message(e)}", item=url) from None


def _safe_name(url: str) -> str:
    name = storage.basename(url.split("?", 1)[0]) or "object"
    return check_relative_name(name, url)


def _valid_hit(meta: dict | None, data: Path, lock_held: bool) -> bool:
    """The recorded copy is there and whole: its stamp is the recorded one, or (with the lock,
    after a write over it) its bytes hash to the recorded sha256 again."""
    if not isinstance(meta, dict) or not data.is_file():
        return False
    if _stamp(data) == meta.get("stamp"):
        return True
    if not lock_held or data.stat().st_size != meta.get("size"):
        return False
    from lcd.io.hashing import sha256_file

    return sha256_file(data) == meta.get("sha256")


def fetch_file(url: str, limits: IoConfig | None = None, *, sha256: str | None = None,
               info: dict | None = None) -> Path:
    """A local, read-only copy of the object at `url` (a local path or file:// URL: that file,
    not copied). `sha256`: the hex digest the bytes must have; `info`: the object's listing entry
    when the caller has it (a folder's listing), saving the HEAD. -> the cached file's path."""
    local = storage.normalize(url)
    if isinstance(local, Path):
        return local
    limits = limits or IoConfig()
    url = check_fetch_url(url)
    info = info if info is not None else object_info(url, limits)
    if info.get("type") not in (None, "file"):
        raise NetworkError(f"{url}: is a folder (prefix), not one object", item=url)
    size = info.get("size")
    size = int(size) if size is not None else None
    if size is not None and size > limits.fetch_max_bytes:
        raise NetworkError(f"{url}: size {size:,} over the limit of {limits.fetch_max_bytes:,} bytes "
                           "(io.fetch_max_bytes)", item=url)
    version = _object_version(info)
    key = _key(url, version, size)  # unversioned (no ETag, no mtime): never a hit, fetched over its entry
    base = cache_root(limits) / "fetch" / "objects" / key[:2]
    meta_path, data = base / f"{key}.json", base / key / _safe_name(url)
    if version and _valid_hit(_read_meta(meta_path), data, lock_held=False):
        return _hit(data, sha256, url)
    with locked(base / f"{key}.lock", url, limits):
        meta = _read_meta(meta_path)
        if version and _valid_hit(meta, data, lock_held=True):
            if _stamp(data) != meta.get("stamp"):
                _write_meta(meta_path, meta | {"stamp": _stamp(data)})
            return _hit(data, sha256, url)
        return _fetch_into(url, data, meta_path, size, info, sha256, limits)


def _hit(data: Path, sha256: str | None, url: str) -> Path:
    STATS["hits"] += 1
    if sha256 is not None:
        meta = _read_meta(data.parent.with_name(f"{data.parent.name}.json")) or {}
        _check_sha(url, meta.get("sha256"), sha256)
    return data


def _check_sha(url: str, got: str | None, want: str | None) -> None:
    if want is not None and got != want.lower():
        raise NetworkError(f"{url}: fetched bytes have sha256 {str(got)[:16]}..., not the expected "
                           f"{want[:16]}...", item=url)


def _fetch_into(url: str, data: Path, meta_path: Path, size: int | None, info: dict, sha256: str | None,
                limits: IoConfig) -> Path:
    """Fetch (the lock held) into a temp file beside `data`, verify, rename, then write the meta."""
    data.parent.mkdir(parents=True, exist_ok=True)
    tmp = data.with_name(f".{data.name}.{secrets.token_hex(4)}.tmp")
    try:
        got = _download(url, tmp, size, limits)
        _check_sha(url, got["sha256"], sha256)
        etag = str(info.get("ETag") or "")
        m = MD5_ETAG.match(etag)
        if m and storage.is_remote(url) and not http.is_http(url) and m.group(1) != got["md5"]:
            raise NetworkError(f"{url}: fetched bytes do not match the store's ETag (MD5 {m.group(1)[:12]}...); "
                               "the object changed during the fetch, or the copy is corrupt", item=url)
        os.chmod(tmp, 0o444)
        if data.exists():
            data.unlink()
        os.replace(tmp, data)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _write_meta(meta_path, {"url": url, "etag": etag or None, "version": _object_version(info), **got,
                            "stamp": _stamp(data)})
    return data


def folder_listing(url: str, limits: IoConfig | None = None) -> dict[str, dict]:
    """{relative name: listing entry} of every object under the folder (prefix) `url`, checked:
    names safe to write under a folder, at most io.fetch_max_files objects and io.fetch_max_bytes
    in all. An http(s) URL names one file and has no listing: refused."""
    limits = limits or IoConfig()
    url = check_fetch_url(url).rstrip("/")
    if http.is_http(url):
        raise NetworkError(f"{url}: an http(s) URL cannot be listed as a folder; give one file, or "
                           "put the folder on object storage", item=url)
    fs, path = storage.filesystem(url)
    path = path.rstrip("/")
    found = storage._guarded(url, lambda: fs.find(path, detail=True, refresh=True))
    out: dict[str, dict] = {}
    for name, meta in found.items():
        if not name.startswith(path + "/") or name.endswith("/") or meta.get("type") == "directory":
            continue  # the prefix itself, folder markers
        out[check_relative_name(name[len(path) + 1:], url)] = meta
    if not out:
        raise NetworkError(f"{url}: no objects under this folder", item=url)
    total = sum(int(m.get("size") or 0) for m in out.values())
    if len(out) > limits.fetch_max_files:
        raise NetworkError(f"{url}: {len(out):,} objects, over the limit of {limits.fetch_max_files:,} "
                           "(io.fetch_max_files)", item=url)
    if total > limits.fetch_max_bytes:
        raise NetworkError(f"{url}: {total:,} bytes in all, over the limit of {limits.fetch_max_bytes:,} "
                           "(io.fetch_max_bytes)", item=url)
    return out


def folder_key(url: str, listing: dict[str, dict]) -> str:
    """The cache key of a folder: its URL and every object's name, version (ETag) and size."""
    return _key(url.rstrip("/"), sorted((rel, _object_version(m), int(m.get("size") or 0)) for rel, m in listing.items()))


def fetch_folder(url: str, limits: IoConfig | None = None, listing: dict[str, dict] | None = None) -> Path:
    """A local copy of the folder (prefix) at `url`: one listing, then each object through
    fetch_file (objects already cached are not fetched again), linked into one folder whose
    name is the folder's key. A local folder is returned as it is. -> the folder's path."""
    local = storage.normalize(url)
    if isinstance(local, Path):
        return local
    limits = limits or IoConfig()
    url = check_fetch_url(url).rstrip("/")
    listing = listing if listing is not None else folder_listing(url, limits)
    key = folder_key(url, listing)
    base = cache_root(limits) / "fetch" / "folders"
    root, meta_path = base / key, base / f"{key}.json"
    if _folder_ok(root, _read_meta(meta_path)):
        STATS["hits"] += 1
        return root
    with locked(base / f"{key}.lock", url, limits):
        if _folder_ok(root, _read_meta(meta_path)):
            STATS["hits"] += 1
            return root
        names = sorted(listing)
        with ThreadPoolExecutor(min(THREADS, len(names)), thread_name_prefix="lcd-fetch") as pool:
            files = list(pool.map(lambda rel: fetch_file(f"{url}/{rel}", limits, info=listing[rel]), names))
        tmp = base / f".{key}.{secrets.token_hex(4)}.tmp"
        try:
            for rel, src in zip(names, files):
                _link(src, tmp / rel)
            meta_path.unlink(missing_ok=True)
            if root.exists():
                shutil.rmtree(root)
            os.replace(tmp, root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _write_meta(meta_path, {"url": url, "files": {rel: _stamp(root / rel) for rel in names}})
    return root


def _link(src: Path, dest: Path) -> None:
    """A hard link (no second copy of gigabytes), or a copy where the cache spans filesystems."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)


def _folder_ok(root: Path, meta: dict | None) -> bool:
    """Every file the folder's meta records is there with its recorded stamp, and nothing else."""
    if not isinstance(meta, dict) or not isinstance(meta.get("files"), dict) or not root.is_dir():
        return False
    try:
        if any(_stamp(root / rel) != stamp for rel, stamp in meta["files"].items()):
            return False
    except (OSError, ValueError):
        return False
    return sum(len(fs) for _, _, fs in os.walk(root)) == len(meta["files"])


def fetch(url: str, limits: IoConfig | None = None) -> Path:
    """fetch_file or fetch_folder, by what `url` names (an object, or a prefix of objects)."""
    local = storage.normalize(url)
    if isinstance(local, Path):
        return local
    info = object_info(url, limits)
    if info.get("type") == "directory":
        return fetch_folder(url, limits)
    return fetch_file(url, limits, info=info)

