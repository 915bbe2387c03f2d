"""Which object URLs the fetch cache (lcd.io.cache) reads, and which names it writes under itself.

Why a check of its own: a fetched URL comes from a manifest, a params file or a flow parameter,
and what it names ends up as files on a worker's disk. fsspec reads far more than object
storage (`zip::`, `simplecache::`, `ssh://`, `hdfs://`, chained URLs that open local files), a
URL may carry credentials that would then be logged, and an object key may hold `..`, a
backslash or a NUL that, joined onto a cache folder, writes outside it. Every refusal is one
NetworkError line naming the URL.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from lcd.errors import NetworkError

# object stores and plain web servers; memory:// for tests. Nothing that reads local files or
# chains filesystems.
FETCH_SCHEMES = ("s3", "gs", "gcs", "az", "abfs", "http", "https", "memory")
MAX_URL_CHARS = 2048
MAX_NAME_CHARS = 255  # one path segment: what ext4 and most filesystems allow
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def url_scheme(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else ""


def check_fetch_url(url: object) -> str:
    """`url` as a string when the fetch cache may read it; else NetworkError naming it:
    a scheme outside FETCH_SCHEMES, a chained URL (`a::b`), control characters or NUL,
    credentials (`user:pass@`), `.`/`..` segments, or over MAX_URL_CHARS."""
    if not isinstance(url, str):
        raise NetworkError(f"{url!r}: a URL must be a string, got {type(url).__name__}", item=repr(url))
    shown = _CONTROL.sub("?", url[:200])
    if len(url) > MAX_URL_CHARS:
        raise NetworkError(f"{shown}...: URL of {len(url):,} characters (the limit is {MAX_URL_CHARS:,})", item=shown)
    if _CONTROL.search(url):
        raise NetworkError(f"{shown}: URL holds control characters or NUL", item=shown)
    if "::" in url:
        raise NetworkError(f"{shown}: chained URLs (a::b) are not fetched; give one object URL", item=shown)
    scheme = url_scheme(url)
    if scheme not in FETCH_SCHEMES:
        raise NetworkError(f"{shown}: scheme {scheme or '(none)'!r} is not fetched "
                           f"(one of {', '.join(FETCH_SCHEMES)})", item=shown)
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise NetworkError(f"{scheme}://...: credentials in a URL are refused (they would be logged); "
                           "use the store's own credential chain", item=f"{scheme}://")
    if not parts.netloc:
        raise NetworkError(f"{shown}: no bucket or host in the URL", item=shown)
    segments = parts.path.split("/")
    if any(s in (".", "..") for s in segments) or "\\" in parts.path:
        raise NetworkError(f"{shown}: '.', '..' or '\\' in the URL's path", item=shown)
    return url


def check_relative_name(rel: str, where: str) -> str:
    """A key below a fetched folder, relative to it, when it is safe to write under a cache
    folder: segments that are not empty, '.' or '..', no backslash, NUL or control character,
    each at most MAX_NAME_CHARS. Else NetworkError naming the folder and the key."""
    shown = _CONTROL.sub("?", rel[:200])
    segments = rel.split("/")
    bad = (not rel or rel.startswith("/") or "\\" in rel or _CONTROL.search(rel)
           or any(s in ("", ".", "..") or len(s.encode()) > MAX_NAME_CHARS for s in segments))
    if bad:
        raise NetworkError(f"{where}: object {shown!r} has a name that cannot be a file under a folder "
                           "(empty, '.', '..', '\\', control characters or a segment over "
                           f"{MAX_NAME_CHARS} bytes)", item=where)
    return rel
