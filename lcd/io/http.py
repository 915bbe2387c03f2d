"""HTTP(S) reads under deadlines: connect, first byte, whole transfer, and a byte limit.

Why not urllib's or aiohttp's own timeouts: urllib's is per socket read (a server sending a byte
every two seconds holds a reader for hours), aiohttp's default is 300 s and fsspec spends it twice
(its size probe, then the read). Here one watchdog per transfer shuts the socket down when
`io.http_total_timeout_s` is spent, wherever the reader is blocked (connect, headers, body), and
the socket timeout bounds each step: `http_connect_timeout_s` to connect, `http_first_byte_timeout_s`
for the answer and for every pause inside the body. A Content-Length over `http_max_bytes` is
refused before any body byte is read; without one, the read stops at the limit.

Every failure is one `NetworkError` (lcd.errors) naming the URL and what happened ("no answer in
30 s", "body exceeded 120 s", "size 2,000,000,000 over the limit of ...", "connection closed after
N of M bytes"); an HTTP 404 or 410 is a FileNotFoundError (`HttpNotFound`), as for a missing file.
"""

from __future__ import annotations

import errno
import http.client
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from functools import lru_cache, partial
from typing import Iterator

from lcd.errors import NetworkError
from lcd.io.config import IoConfig

CHUNK = 1 << 16
USER_AGENT = "lcdiffusion"
REDIRECTS = (301, 302, 303, 307, 308)


def is_http(url: object) -> bool:
    return str(url).lower().startswith(("http://", "https://"))


class HttpNotFound(FileNotFoundError):
    """HTTP 404 / 410: the URL names nothing (callers treat it as a missing file)."""

    def __init__(self, url: str, code: int, reason: str):
        super().__init__(errno.ENOENT, f"HTTP {code} {reason}".strip(), url)

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


class _Watch:
    """One transfer's clock across its redirects: the socket in use, the step it is at, and a
    timer that shuts the socket down when the total deadline passes (unblocking any read)."""

    def __init__(self, limits: IoConfig):
        self.limits = limits
        self.t0 = time.monotonic()
        self.deadline = self.t0 + limits.http_total_timeout_s
        self.step = "connect"  # connect -> answer -> body
        self.expired = False
        self.sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(limits.http_total_timeout_s, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def step_timeout(self, limit_s: float) -> float:
        """A socket timeout for the next step: its own limit, capped by what the deadline leaves."""
        return max(0.001, min(limit_s, self.remaining()))

    def attach(self, sock: socket.socket) -> None:
        with self._lock:
            self.sock = sock
            if self.expired:
                _shutdown(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            if self.sock is not None:
                _shutdown(self.sock)

    def close(self) -> None:
        self._timer.cancel()

    def timed_out(self) -> bool:
        """The total deadline is spent (a step's socket timeout capped by it ends a hair early)."""
        return self.expired or self.remaining() <= 0.05


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # already closed
        pass


class _Deadlined:
    """Mixin for http.client connections: connect within the connect limit, then wait for the
    answer within the first-byte limit, the socket registered with the transfer's watchdog."""

    def __init__(self, host, *, watch: _Watch, **kw):
        super().__init__(host, **kw)
        self._watch = watch
        self._create_connection = self._connect_within  # http.client's hook for socket.create_connection

    def _connect_within(self, address, timeout, source_address=None):
        """socket.create_connection with the name lookup bounded too (getaddrinfo has no timeout
        of its own: a dead resolver would hold the connect step for its retries)."""
        host, port = address
        last: OSError | None = None
        for family, kind, proto, _, addr in _resolve(host, port, timeout):
            sock = socket.socket(family, kind, proto)
            try:
                sock.settimeout(self._watch.step_timeout(timeout))
                if source_address:
                    sock.bind(source_address)
                sock.connect(addr)
                return sock
            except OSError as e:
                sock.close()
                last = e
        raise last or OSError(f"no address for {host}")

    def connect(self):
        w = self._watch
        w.step = "connect"
        self.timeout = w.step_timeout(w.limits.http_connect_timeout_s)
        super().connect()
        self.sock.settimeout(w.step_timeout(w.limits.http_first_byte_timeout_s))
        w.attach(self.sock)
        w.step = "answer"


def _resolve(host: str, port: int, timeout: float) -> list:
    """getaddrinfo in a daemon thread, given up after `timeout` s (TimeoutError)."""
    box: dict = {}

    def run() -> None:
        try:
            box["infos"] = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
        except OSError as e:
            box["error"] = e

    t = threading.Thread(target=run, daemon=True, name="lcd-resolve")
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise TimeoutError(f"no address for {host} in {timeout:g} s")
    if "error" in box:
        raise box["error"]
    return box["infos"]


class _HTTPConnection(_Deadlined, http.client.HTTPConnection):
    pass


class _HTTPSConnection(_Deadlined, http.client.HTTPSConnection):
    pass


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, watch: _Watch):
        super().__init__()
        self._watch = watch

    def http_open(self, req):
        return self.do_open(partial(_HTTPConnection, watch=self._watch), req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, watch: _Watch):
        super().__init__(context=_tls_context())
        self._watch = watch

    def https_open(self, req):
        return self.do_open(partial(_HTTPSConnection, watch=self._watch), req, context=self._context)


class _Redirects(urllib.request.HTTPRedirectHandler):
    """urllib's redirects, but a redirect's body is never read (urllib reads it whole, and it may
    never end: memory and the deadline spent on nothing)."""

    def http_error_302(self, req, fp, code, msg, headers):
        fp.read = lambda *a, **k: b""
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


class _NoFTP(urllib.request.FTPHandler):
    """urllib follows a redirect to ftp:// with only a per-read timeout: refused here."""

    def ftp_open(self, req):
        raise urllib.error.URLError(f"redirect to {req.full_url} refused (only http and https are read)")


@lru_cache(maxsize=1)
def _tls_context() -> ssl.SSLContext:
    return ssl.create_default_context()


@contextmanager
def _response(url: str, limits: IoConfig, method: str) -> Iterator[tuple[http.client.HTTPResponse, _Watch]]:
    """The answer to `method url` (redirects followed: urllib's, at most 10) with its headers read;
    every failure up to there is a NetworkError (or HttpNotFound)."""
    w = _Watch(limits)
    opener = urllib.request.build_opener(_HTTPHandler(w), _HTTPSHandler(w), _Redirects(), _NoFTP())
    try:
        try:
            req = urllib.request.Request(url, method=method,
                                         headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})
            r = opener.open(req, timeout=limits.http_connect_timeout_s)
        except Exception as e:  # noqa: BLE001 - every failure of the boundary becomes one named error
            raise _error(url, w, e) from None
        with r:
            if w.timed_out():  # the watchdog cut the headers short: http.client took EOF for their end
                raise _error(url, w, TimeoutError())
            w.step = "body"
            yield r, w
    finally:
        w.close()


def fetch(url: str, limits: IoConfig | None = None) -> bytes:
    """The body of GET `url` within `limits` (default IoConfig()): NetworkError naming the URL
    and what went wrong, HttpNotFound for a 404/410."""
    return b"".join(iter_body(url, limits))


def iter_body(url: str, limits: IoConfig | None = None, chunk: int = CHUNK) -> Iterator[bytes]:
    """The body of GET `url` in blocks of at most `chunk` bytes, under the same limits and errors
    as fetch, without holding it (a hash streams a large body)."""
    limits = limits or IoConfig()
    with _response(url, limits, "GET") as (r, w):
        size = content_length(r)
        cap = limits.http_max_bytes
        if size is not None and size > cap:
            raise NetworkError(f"{url}: size {size:,} over the limit of {cap:,} bytes (io.http_max_bytes)", item=url)
        got = 0
        while True:
            try:
                if w.sock is not None:
                    w.sock.settimeout(w.step_timeout(limits.http_first_byte_timeout_s))
                block = r.read1(min(chunk, cap + 1 - got))
            except Exception as e:  # noqa: BLE001
                raise _error(url, w, e, got=got, size=size) from None
            if w.timed_out():  # the watchdog shut the socket: what was read is not the whole body
                raise _error(url, w, TimeoutError(), got=got, size=size)
            if not block:
                break
            got += len(block)
            if got > cap:
                raise NetworkError(f"{url}: body over the limit of {cap:,} bytes (io.http_max_bytes; "
                                   "no Content-Length)", item=url)
            yield block
        if size is not None and got < size:
            raise NetworkError(f"{url}: connection closed after {got:,} of {size:,} bytes", item=url)


def head(url: str, limits: IoConfig | None = None) -> dict:
    """What the server says of `url` without its body: {name, type: "file", size (None when not
    sent), ETag, LastModified}. A server that refuses HEAD (405, 501) is asked with a GET whose
    body is not read."""
    limits = limits or IoConfig()
    try:
        with _response(url, limits, "HEAD") as (r, _):
            return _info(url, r)
    except NetworkError as e:
        if getattr(e, "http_status", None) not in (405, 501):
            raise
    with _response(url, limits, "GET") as (r, _):
        return _info(url, r)


def _info(url: str, r: http.client.HTTPResponse) -> dict:
    return {"name": url, "type": "file", "size": content_length(r), "ETag": r.headers.get("ETag"),
            "LastModified": r.headers.get("Last-Modified")}


def content_length(r) -> int | None:
    """The answer's Content-Length as an int; None when absent, chunked, or not a number."""
    raw = r.headers.get("Content-Length")
    if raw is None or r.headers.get("Transfer-Encoding", "").lower() == "chunked":
        return None
    try:
        n = int(raw.strip())
    except ValueError:
        return None
    return n if n >= 0 else None


def one_line(text: object) -> str:
    return " ".join(str(text).split())


def _error(url: str, w: _Watch, e: BaseException, got: int | None = None, size: int | None = None) -> Exception:
    """The exception of one failed transfer -> NetworkError (one line, naming the URL), or
    HttpNotFound for a 404/410."""
    lim = w.limits
    of = f" of {size:,}" if size is not None else ""
    if isinstance(e, urllib.error.HTTPError):
        e.close()
        if e.code in (404, 410):
            return HttpNotFound(url, e.code, one_line(e.reason))
        what = (f"redirect loop or too many redirects (last: HTTP {e.code})" if e.code in REDIRECTS
                else f"HTTP {e.code} {one_line(e.reason)}")
        err = NetworkError(f"{url}: {what}", item=url)
        err.http_status = e.code
        return err
    if isinstance(e, urllib.error.URLError):
        e = e.reason if isinstance(e.reason, BaseException) else ValueError(e.reason)
    if w.timed_out() and isinstance(e, (OSError, http.client.HTTPException, ValueError, TimeoutError)):
        what = (f"body exceeded {lim.http_total_timeout_s:g} s ({got or 0:,}{of} bytes read)" if w.step == "body"
                else f"no complete answer in {lim.http_total_timeout_s:g} s")
    elif isinstance(e, TimeoutError):  # socket.timeout: one step's own limit
        what = {"connect": f"no connection in {lim.http_connect_timeout_s:g} s",
                "answer": f"no answer in {lim.http_first_byte_timeout_s:g} s"}.get(
            w.step, f"no answer in {lim.http_first_byte_timeout_s:g} s after {got or 0:,}{of} bytes (stalled)")
    elif w.step == "body" and isinstance(e, (http.client.IncompleteRead, ConnectionError, http.client.HTTPException)):
        what = f"connection closed after {got or 0:,}{of} bytes"
    elif isinstance(e, ssl.SSLError) or isinstance(e, ssl.CertificateError):
        what = f"TLS error ({one_line(e)})"
    elif isinstance(e, http.client.RemoteDisconnected) or (w.step == "answer" and isinstance(e, ConnectionError)):
        what = "connection closed before an answer"
    elif isinstance(e, http.client.HTTPException):
        what = f"bad HTTP answer ({type(e).__name__}: {one_line(e)})"
    elif isinstance(e, OSError) and w.step == "connect":
        what = f"cannot reach it ({type(e).__name__}: {one_line(e)})"
    elif isinstance(e, ValueError):
        what = f"cannot open it ({one_line(e)})"
    else:
        what = f"cannot read it ({type(e).__name__}: {one_line(e)})"
    return NetworkError(f"{url}: {what}", item=url)


def call_within(fn, limits: IoConfig | None, url: str):
    """`fn()` (a client library's request, e.g. clip-retrieval's, whose own timeout is an hour per
    read) given up after `limits.http_total_timeout_s`: NetworkError naming `url`. The call goes on
    in its daemon thread until its own timeout; its result is dropped. Its exceptions are raised here."""
    limits = limits or IoConfig()
    box: dict = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            box["error"] = e

    t = threading.Thread(target=run, daemon=True, name="lcd-call-within")
    t.start()
    t.join(limits.http_total_timeout_s)
    if t.is_alive():
        raise NetworkError(f"{url}: no complete answer in {limits.http_total_timeout_s:g} s", item=url)
    if "error" in box:
        raise box["error"]
    return box["value"]


def http_filesystem(limits: IoConfig | None = None):
    """fsspec's HTTP filesystem with aiohttp deadlines from `limits`: for what still goes through
    fsspec on an http(s) URL. fsspec caches instances by their arguments, so by the limits."""
    import aiohttp
    import fsspec

    limits = limits or IoConfig()
    timeout = aiohttp.ClientTimeout(total=limits.http_total_timeout_s, sock_connect=limits.http_connect_timeout_s,
                                    sock_read=limits.http_first_byte_timeout_s)
    return fsspec.filesystem("http", client_kwargs={"timeout": timeout})
