"""lcd.io.http against a misbehaving server on 127.0.0.1 (tests/hostile_http.py): every way a URL
can hang or break ends within its deadline plus a small margin, as one NetworkError line that
names the URL and says what happened; a 404 is a missing file."""

from __future__ import annotations

import re
import socket
import time

import pytest

from lcd.errors import LcdError, NetworkError
from lcd.io import http, storage
from lcd.io.config import IoConfig
from tests.hostile_http import HostileServer, png_bytes

FAST = IoConfig(http_connect_timeout_s=1, http_first_byte_timeout_s=1, http_total_timeout_s=2,
                http_max_bytes=50_000_000)
MARGIN = 1.0  # seconds beyond the deadline a failure may take (thread start, teardown)


@pytest.fixture
def srv():
    with HostileServer() as s:
        yield s


def _timed(fn, *a):
    t0 = time.monotonic()
    with pytest.raises(Exception) as ei:
        fn(*a)
    return ei.value, time.monotonic() - t0


@pytest.mark.parametrize("mode, message, deadline", [
    ("never", r"no answer in 1 s$", 1.0),
    ("stall", r"no answer in 1 s after 0 of 1,000 bytes \(stalled\)$", 1.0),
    ("slow", r"body exceeded 2 s \(\d+ of 5,\d{3} bytes read\)$", 2.0),
    ("huge", r"size 2,000,000,000 over the limit of 50,000,000 bytes \(io.http_max_bytes\)$", 0.5),
    ("short", r"connection closed after 2,\d{3} of 5,\d{3} bytes$", 0.5),
    ("loop", r"redirect loop or too many redirects \(last: HTTP 302\)$", 0.5),
    ("hop", r"no answer in 1 s$", 1.0),
    ("dripheaders", r"no complete answer in 2 s$", 2.0),
    ("chunkcut", r"connection closed after 100 bytes$", 0.5),
    ("ftp", r"cannot open it \(redirect to ftp://127\.0\.0\.1:\d+/x\.png refused \(only http and https are read\)\)$", 0.5),
])
def test_each_misbehaviour_fails_in_time_with_a_line_naming_the_url(srv, mode, message, deadline):
    url = srv.url(f"{mode}/photo.png")
    err, took = _timed(http.fetch, url, FAST)
    assert isinstance(err, NetworkError) and isinstance(err, LcdError)
    assert str(err).startswith(f"{url}: ") and "\n" not in str(err) and err.item == url
    assert re.search(message, str(err)), str(err)
    assert took < deadline + MARGIN, took


def test_an_endless_body_stops_at_the_byte_limit_or_the_deadline(srv):
    url = srv.url("endless/x.png")
    err, took = _timed(http.fetch, url, FAST.model_copy(update={"http_max_bytes": 1_000_000}))
    assert isinstance(err, NetworkError) and took < 2 + MARGIN
    assert str(err) == f"{url}: body over the limit of 1,000,000 bytes (io.http_max_bytes; no Content-Length)"
    err, took = _timed(http.fetch, url, FAST.model_copy(update={"http_max_bytes": 1 << 40}))
    assert isinstance(err, NetworkError) and "body exceeded 2 s" in str(err) and took < 2 + MARGIN


def test_a_second_download_cut_short_is_a_network_error_not_a_payload_exception(srv):
    url = srv.url("second/x.png")
    assert http.fetch(url, FAST) == srv.body
    err, _ = _timed(http.fetch, url, FAST)
    assert isinstance(err, NetworkError) and "connection closed after 1,958 of 5,876 bytes" in str(err)


def test_a_redirect_is_followed_without_reading_its_body(srv):
    t0 = time.monotonic()
    assert http.fetch(srv.url("redirbomb/x.png"), FAST) == srv.body  # its endless body never read
    assert time.monotonic() - t0 < 0.5


def test_a_404_is_a_missing_file_and_good_urls_read_whole(srv):
    err, _ = _timed(http.fetch, srv.url("404/x.png"), FAST)
    assert isinstance(err, FileNotFoundError) and str(err) == f"{srv.url('404/x.png')}: HTTP 404 Not Found"
    assert not storage.exists(srv.url("404/x.png"), FAST) and not storage.is_file(srv.url("404/x.png"), FAST)
    assert storage.read_bytes(srv.url("ok/x.png"), FAST) == srv.body == png_bytes()
    assert storage.info(srv.url("ok/x.png"), FAST)["size"] == len(srv.body)
    with storage.open_read(srv.url("ok/x.png"), FAST) as f:
        assert f.seek(0, 2) == len(srv.body)


def test_a_head_that_never_answers_fails_in_the_first_byte_limit(srv):
    err, took = _timed(storage.info, srv.url("never/x.png"), FAST)
    assert isinstance(err, NetworkError) and str(err).endswith("no answer in 1 s") and took < 1 + MARGIN


def test_a_refused_connection_and_an_unknown_host_say_they_cannot_reach_it():
    with socket.socket() as s:  # bound, never listening, then closed: nobody answers on it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    err, took = _timed(http.fetch, f"http://127.0.0.1:{port}/x.png", FAST)
    assert isinstance(err, NetworkError) and "cannot reach it (ConnectionRefusedError" in str(err) and took < 1
    err, _ = _timed(http.fetch, "http://[::1/x.png", FAST)
    assert isinstance(err, NetworkError) and str(err).startswith("http://[::1/x.png: cannot open it")


def test_the_default_limits_are_the_documented_ones():
    d = IoConfig()
    assert (d.http_connect_timeout_s, d.http_first_byte_timeout_s, d.http_total_timeout_s, d.http_max_bytes) == \
        (10, 30, 120, 1 << 30)
    with pytest.raises(ValueError, match="http_total_timeout_s"):
        IoConfig(http_total_timeout_s=0)
    with pytest.raises(ValueError, match="extra"):
        IoConfig(http_timeout=3)


@pytest.mark.parametrize("exc", ["ClientPayloadError", "ServerDisconnectedError", "FSTimeoutError", "TimeoutError",
                                 "IncompleteRead"])
def test_any_remote_filesystems_exception_is_one_network_error_naming_the_url(exc, monkeypatch):
    """Object stores other than http(s) still go through fsspec; whatever their client raises
    (aiohttp's payload error is not an OSError) is one NetworkError line, a missing object stays
    FileNotFoundError."""
    import http.client as hc

    import aiohttp
    import fsspec
    from fsspec.exceptions import FSTimeoutError
    from fsspec.implementations.memory import MemoryFileSystem

    make = {"ClientPayloadError": lambda: aiohttp.ClientPayloadError("Response payload is not completed"),
            "ServerDisconnectedError": lambda: aiohttp.ServerDisconnectedError(),
            "FSTimeoutError": lambda: FSTimeoutError(), "TimeoutError": lambda: TimeoutError(),
            "IncompleteRead": lambda: hc.IncompleteRead(b"x" * 10, 90)}[exc]

    class Flaky(MemoryFileSystem):  # a real fsspec filesystem whose transfers break as a network's do
        protocol = "flaky"

        def cat_file(self, path, start=None, end=None, **kw):
            if "gone" in path:
                raise FileNotFoundError(path)
            raise make()

        def info(self, path, **kw):
            raise make()

    fsspec.register_implementation("flaky", Flaky, clobber=True)
    for call in (storage.read_bytes, storage.info):
        with pytest.raises(NetworkError, match=rf"^flaky://b/x\.png: cannot read it \({exc}"):
            call("flaky://b/x.png")
    with pytest.raises(FileNotFoundError):
        storage.read_bytes("flaky://b/gone.png")


def test_a_hash_streams_the_body_in_blocks_under_the_same_limits(srv):
    import hashlib

    from lcd.io.hashing import sha256_file

    blocks = list(storage.iter_bytes(srv.url("ok/x.png"), FAST, chunk=1000))
    assert b"".join(blocks) == srv.body and max(map(len, blocks)) <= 1000 and len(blocks) >= 6
    assert sha256_file(srv.url("ok/h.png"), limits=FAST) == hashlib.sha256(srv.body).hexdigest()
    err, took = _timed(sha256_file, srv.url("slow/h.png"), 1 << 22, FAST)
    assert isinstance(err, NetworkError) and "body exceeded 2 s" in str(err) and took < 2 + MARGIN
