"""Output roots that are local folders or fsspec URLs (`s3://bucket/run`, `gs://...`, `file://...`).

Why: workers on several machines share one output root only through object storage (or a shared
filesystem). Paths here are `Path` for local roots (and `file://` URLs, which are local) and `str`
for remote URLs, so `Path("s3://b/x")` never collapses the scheme.

Atomicity: locally, `lcd.io.atomic.atomic_path` writes a temp file and renames it. On object
storage one PUT is atomic by itself (the object appears whole or not at all), so a write is a
local temp file uploaded in one `put_file`; the output object, written last, stays the done
marker. Credentials and endpoints come from the filesystem's usual chain (AWS_* variables,
profiles, FSSPEC_S3_* configuration); nothing here reads, stores or logs them.

Network reads: an http(s) URL is read by lcd.io.http under the `limits` passed (the `io` section,
lcd.io.config; its defaults when none is), never by fsspec's HTTP filesystem with aiohttp's 300 s
defaults. A read of any other remote that fails for a reason other than a missing object is one
NetworkError naming the URL, so no client library's exception class reaches a batch.
"""

from __future__ import annotations

import inspect
import io
import os
import stat
from pathlib import Path
from typing import IO, Iterable, Iterator, NamedTuple

from lcd.errors import LcdError, NetworkError
from lcd.io import http
from lcd.io.config import IoConfig

def is_remote(p: str | Path) -> bool:
    """True for a URL other than file:// (s3://, gs://, memory://, ...)."""
    s = str(p)
    return "://" in s and not s.startswith("file://")


def normalize(p: str | Path) -> str | Path:
    """A remote URL as a string, anything else (incl. file://) as a local Path."""
    if is_remote(p):
        return str(p).rstrip("/")
    s = str(p)
    return Path(s[len("file://"):] if s.startswith("file://") else s)


def join(root: str | Path, *parts: str) -> str | Path:
    """`root/part/...`, keeping a remote URL a string."""
    r = normalize(root)
    if isinstance(r, Path):
        return r.joinpath(*parts)
    return "/".join([r, *(x.strip("/") for x in parts)])


def basename(p: str | Path) -> str:
    return str(p).rstrip("/").rsplit("/", 1)[-1]


def filesystem(url: str, limits: IoConfig | None = None):
    """(fsspec filesystem, path inside it) for a remote URL; an http(s) one gets aiohttp
    deadlines from `limits` (lcd.io.http.http_filesystem)."""
    import fsspec

    if http.is_http(url):
        return http.http_filesystem(limits), url
    return fsspec.core.url_to_fs(url)


def exists(p: str | Path, limits: IoConfig | None = None) -> bool:
    p = normalize(p)
    if isinstance(p, Path):
        return p.exists()
    if http.is_http(p):
        try:
            http.head(p, limits)
        except FileNotFoundError:
            return False
        return True
    fs, path = filesystem(p)
    return _guarded(p, lambda: fs.exists(path))


def open_read(p: str | Path, limits: IoConfig | None = None) -> IO[bytes]:
    """A binary file object to read (close it, or use it in `with`). An http(s) URL is read
    whole, within `limits`, into memory (so it can seek, as Parquet readers do)."""
    p = normalize(p)
    if isinstance(p, Path):
        return open(p, "rb")
    if http.is_http(p):
        return io.BytesIO(http.fetch(p, limits))
    fs, path = filesystem(p)
    return _guarded(p, lambda: fs.open(path, "rb"))


def _guarded(url: str, call):
    """`call()` with a failure other than a missing object (or one of ours) made one NetworkError
    naming `url`: s3fs, gcsfs and aiohttp raise their own classes, not OSError."""
    try:
        return call()
    except (FileNotFoundError, LcdError):
        raise
    except Exception as e:  # noqa: BLE001 - the boundary: no library's exception class goes further
        raise NetworkError(f"{url}: cannot read it ({type(e).__name__}: {http.one_line(e) or 'no message'})",
                           item=url) from None


def not_found_message(err: FileNotFoundError) -> str:
    """What to say for a FileNotFoundError: "file not found", unless fsspec raised it for a URL
    it could not reach at all (its HTTP filesystem turns a refused connection or a DNS failure
    into FileNotFoundError, with the real error as the cause): then that error, so a dead host is
    not reported as a missing file."""
    if isinstance(err, http.HttpNotFound):
        return f"file not found ({err.strerror})"
    cause = err.__cause__
    if cause is not None and not isinstance(cause, FileNotFoundError):
        return f"cannot reach it ({type(cause).__name__}: {cause})"
    return "file not found"


def iter_bytes(p: str | Path, limits: IoConfig | None = None, chunk: int = 1 << 22) -> Iterator[bytes]:
    """The bytes of a file or URL in blocks (an http(s) one streamed within `limits`): what a hash
    reads, without holding a large body."""
    p = normalize(p)
    if not isinstance(p, Path) and http.is_http(p):
        yield from http.iter_body(p, limits, chunk)
        return
    with open_read(p, limits) as f:
        while block := f.read(chunk):
            yield block


def read_bytes(p: str | Path, limits: IoConfig | None = None) -> bytes:
    """All bytes of a file or URL (an http(s) one within `limits`)."""
    p = normalize(p)
    if isinstance(p, Path):
        return p.read_bytes()
    if http.is_http(p):
        return http.fetch(p, limits)
    fs, path = filesystem(p)
    return _guarded(p, lambda: fs.cat_file(path))


def list_names(folder: str | Path) -> set[str]:
    """Names of the entries directly in `folder` (one listing); empty when it does not exist."""
    folder = normalize(folder)
    if isinstance(folder, Path):
        try:
            with os.scandir(folder) as it:
                return {e.name for e in it}
        except FileNotFoundError:
            return set()
    fs, path = filesystem(folder)
    try:
        return {basename(x) for x in fs.ls(path, detail=False, refresh=True)}
    except FileNotFoundError:
        return set()


class Entry(NamedTuple):
    """What a look at a folder entry says without opening it: a regular file (locally by lstat,
    so a symlink, even to a file, is not; every object is), its size, and a stamp that changes
    with its content (mtime_ns:ctime_ns of a file, the ETag, else mtime, of an object)."""

    regular: bool
    size: int
    stamp: str


def _object_entry(meta: dict) -> Entry:
    stamp = meta.get("ETag") or meta.get("mtime") or meta.get("LastModified") or meta.get("created")
    return Entry(meta.get("type") == "file", int(meta.get("size") or 0), str(stamp))


def stat_entry(p: str | Path) -> Entry | None:
    """The Entry of one file or object (lstat locally, a HEAD remotely); None when it is absent."""
    p = normalize(p)
    try:
        if isinstance(p, Path):
            st = os.lstat(p)  # ctime too: a chmod, a rename over it or a reset mtime (os.utime) changes it
            return Entry(stat.S_ISREG(st.st_mode), st.st_size, f"{st.st_mtime_ns}:{st.st_ctime_ns}")
        return _object_entry(info(p))
    except FileNotFoundError:
        return None


def entries(folder: str | Path, names: Iterable[str] | None = None) -> dict[str, Entry]:
    """{name: Entry} of `names` found in `folder` (None: everything in it), at the cost of
    present_names: an lstat per name locally, the listing (its sizes and ETags come with it) on
    object storage."""
    folder = normalize(folder)
    if isinstance(folder, Path):
        if names is None:
            names = list_names(folder)
        return {n: e for n in set(names) if (e := stat_entry(folder / n)) is not None}
    fs, path = filesystem(folder)
    if names is None:
        try:
            return {basename(m["name"]): _object_entry(m) for m in fs.ls(path, detail=True, refresh=True)}
        except FileNotFoundError:
            return {}
    names = set(names)
    if not names:
        return {}
    if "prefix" not in inspect.signature(fs.find).parameters:  # memory://, http(s)://: no prefix listing
        return {n: e for n, e in entries(folder).items() if n in names}
    prefixes = name_prefixes(names, max(4, len(names) // 500))
    if prefixes == [""]:
        return {n: e for n, e in entries(folder).items() if n in names}
    found: dict[str, Entry] = {}
    for prefix in prefixes:  # a prefix listing is never cached by s3fs; refresh all the same
        for key, meta in fs.find(path, maxdepth=1, prefix=prefix, refresh=True, detail=True).items():
            if basename(key) in names:
                found[basename(key)] = _object_entry(meta)
    return found


def present_names(folder: str | Path, names: Iterable[str]) -> set[str]:
    """Which of `names` are entries of `folder`. A local folder stats each name: O(len(names)),
    whatever the folder holds (a shard's 5,000 outputs among a job's million cost ~15 ms, a
    listing of the million ~0.7 s). A remote folder is listed, but where the filesystem lists by
    key prefix (s3fs) only under the names' own prefixes (name_prefixes): a shard of ids
    `item005000`..`item009999` among a million lists its 5,000 keys (5 LIST pages of 1,000,
    prefixes item005..item009), not the million (1,000 pages); ids that share no prefix (random
    UUIDs) list the folder once, as before.
    Listing beats a HEAD per name: on S3 a missing key costs a HEAD and a LIST (s3fs checks for
    a folder of that name)."""
    names = set(names)
    folder = normalize(folder)
    if isinstance(folder, Path):
        return {n for n in names if os.path.lexists(folder / n)}
    if not names:
        return set()
    fs, path = filesystem(folder)
    if "prefix" not in inspect.signature(fs.find).parameters:  # memory://, http(s)://: no prefix listing
        return list_names(folder) & names
    prefixes = name_prefixes(names, max(4, len(names) // 500))
    if prefixes == [""]:
        return list_names(folder) & names
    found: set[str] = set()
    for prefix in prefixes:  # a prefix listing is never cached by s3fs; refresh all the same
        found.update(basename(x) for x in fs.find(path, maxdepth=1, prefix=prefix, refresh=True))
    return found & names


def name_prefixes(names: Iterable[str], max_prefixes: int) -> list[str]:
    """The longest prefixes, at most `max_prefixes` of them, that together cover every name
    (sorted; all of one length but for whole names shorter than it, and none under another);
    [""] when the names share nothing at any length that allows.
    Pure: what a prefix listing of these names needs to ask for.

    >>> name_prefixes(["item098998.png", "item098999.png", "item099000.png", "item100000.png"], 3)
    ['item09899', 'item09900', 'item10000']
    """
    names = sorted(set(names))
    if not names:
        return [""]
    best = [""]
    for length in range(1, max(map(len, names)) + 1):
        cut = sorted({n[:length] for n in names})
        if len(cut) > max_prefixes:
            break
        best = cut
    kept: list[str] = []
    for p in best:  # sorted: a prefix comes before every name under it ("ab" and "ac" are listed under "a")
        if not kept or not p.startswith(kept[-1]):
            kept.append(p)
    return kept


def remove(p: str | Path) -> None:
    """Delete a file or object; nothing when it is absent."""
    p = normalize(p)
    if isinstance(p, Path):
        p.unlink(missing_ok=True)
        return
    fs, path = filesystem(p)
    try:
        fs.rm_file(path)
    except FileNotFoundError:
        pass
    fs.invalidate_cache(path.rsplit("/", 1)[0])


def info(url: str, limits: IoConfig | None = None) -> dict:
    """A remote object's listing entry (size, ETag/mtime): FileNotFoundError when it is absent.
    An http(s) URL is asked with a HEAD within `limits`."""
    if http.is_http(url):
        return http.head(url, limits)
    fs, path = filesystem(url)
    return _guarded(url, lambda: fs.info(path))


def is_file(p: str | Path, limits: IoConfig | None = None) -> bool:
    p = normalize(p)
    if isinstance(p, Path):
        return p.is_file()
    try:
        return info(p, limits).get("type") == "file"
    except FileNotFoundError:
        return False


def parent(p: str | Path) -> str | Path:
    """The folder holding `p`: a URL's prefix, or a resolved local folder."""
    p = normalize(p)
    return p.resolve().parent if isinstance(p, Path) else p.rsplit("/", 1)[0]


def upload(local: Path, dest: str) -> None:
    """One PUT of a finished local file to a remote URL (the object appears whole or not at all)."""
    fs, path = filesystem(dest)
    fs.put_file(str(local), path)
    fs.invalidate_cache(path.rsplit("/", 1)[0])
