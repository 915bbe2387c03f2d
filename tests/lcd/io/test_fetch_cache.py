"""The per-machine fetch cache (lcd.io.cache) against a real S3 API server on 127.0.0.1: a second
use is a hit (no GET, counted from the S3 client's requests), a changed object is fetched again,
a corrupted copy is fetched again, two fetchers at once fetch once, and hostile URLs, names and
sizes are refused in one line naming the URL."""

from __future__ import annotations

import os
import threading

import pytest

from lcd.errors import NetworkError
from lcd.io import cache
from lcd.io.config import IoConfig
from tests.s3server import gets, request_log, s3, s3_endpoint  # noqa: F401 - the fixtures

URL = "s3://lcd-test/models/w.safetensors"


def test_second_use_is_a_hit_and_a_changed_object_is_fetched_again(s3, tmp_path):
    s3.pipe({"lcd-test/models/w.safetensors": b"a" * 1000})
    log = request_log(URL)
    first = cache.fetch_file(URL)
    assert first.read_bytes() == b"a" * 1000 and first.name == "w.safetensors"
    assert str(first).startswith(str(tmp_path / "lcd-cache")) and first.stat().st_mode & 0o777 == 0o444
    assert gets(log) == ["models/w.safetensors"]
    log.clear()
    assert cache.fetch_file(URL) == first and gets(log) == []  # one HEAD, no GET
    assert [op for op, _ in log] == ["HeadObject"]
    s3.pipe({"lcd-test/models/w.safetensors": b"b" * 1000})  # same name and size, new bytes: new ETag
    log.clear()
    again = cache.fetch_file(URL)
    assert again.read_bytes() == b"b" * 1000 and again != first and gets(log) == ["models/w.safetensors"]


def test_a_corrupted_copy_is_fetched_again_and_a_wrong_sha256_refused(s3):
    s3.pipe({"lcd-test/models/w.safetensors": b"weights" * 100})
    p = cache.fetch_file(URL)
    os.chmod(p, 0o644)
    p.write_bytes(b"WEIGHTS" * 100)  # same size, other bytes: the stamp changed, the sha256 differs
    log = request_log(URL)
    assert cache.fetch_file(URL).read_bytes() == b"weights" * 100 and gets(log) == ["models/w.safetensors"]
    log.clear()
    assert cache.fetch_file(URL) == p and gets(log) == []  # and it is a hit again
    meta = p.parent.with_name(p.parent.name + ".json")
    meta.write_text('{"stamp": 1')  # a torn record: the copy is not trusted, it is fetched again
    assert cache.fetch_file(URL).read_bytes() == b"weights" * 100 and gets(log) == ["models/w.safetensors"]
    with pytest.raises(NetworkError, match=r"^s3://lcd-test/models/w.safetensors: fetched bytes have sha256 .* "
                                           r"not the expected 0000000000000000"):
        cache.fetch_file(URL, sha256="0" * 64)


def test_two_fetchers_at_once_fetch_once(s3):
    s3.pipe({"lcd-test/models/w.safetensors": os.urandom(3 << 20)})
    log = request_log(URL)
    out: list = []
    threads = [threading.Thread(target=lambda: out.append(cache.fetch_file(URL))) for _ in range(3)]
    [t.start() for t in threads], [t.join() for t in threads]
    assert len(set(out)) == 1 and len(out) == 3
    assert gets(log) == ["models/w.safetensors"]
    assert not [f for f in out[0].parent.iterdir() if f.name.endswith(".tmp")]


def test_two_processes_at_once_fetch_once(s3, tmp_path):
    """Two worker processes sharing a machine's cache ask for the same weights at the same time:
    the flock makes one fetch and the other read its copy (each prints what it fetched)."""
    import subprocess
    import sys

    s3.pipe({"lcd-test/models/w.safetensors": os.urandom(8 << 20)})
    import time

    code = ("import os, sys, time; from pathlib import Path; from lcd.io import cache; "
            "Path(sys.argv[2], f'ready-{os.getpid()}').touch()\n"
            "while not Path(sys.argv[2], 'go').exists(): time.sleep(0.01)\n"
            "p = cache.fetch_file(sys.argv[1]); print(cache.STATS['fetched'], p.stat().st_size)")
    procs = [subprocess.Popen([sys.executable, "-c", code, URL, str(tmp_path)], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("ready-*"))) < 2 and time.monotonic() < deadline:  # both imported: start together
        time.sleep(0.01)
    (tmp_path / "go").touch()
    outs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert sorted(int(o[0]) for o in outs) == [0, 1] and {o[1] for o in outs} == {str(8 << 20)}


def test_a_folder_is_fetched_once_and_only_its_changed_object_again(s3):
    s3.pipe({f"lcd-test/concepts/dog/{n}": n.encode() * 10 for n in ("concept.safetensors", "card.json", "sub/x.txt")})
    url = "s3://lcd-test/concepts/dog"
    log = request_log(url)
    root = cache.fetch_folder(url)
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) == \
        ["card.json", "concept.safetensors", "sub/x.txt"]
    assert sorted(gets(log)) == ["concepts/dog/card.json", "concepts/dog/concept.safetensors", "concepts/dog/sub/x.txt"]
    log.clear()
    assert cache.fetch_folder(url) == root and gets(log) == []
    s3.pipe({"lcd-test/concepts/dog/card.json": b"{}"})
    log.clear()
    new = cache.fetch_folder(url)
    assert new != root and (new / "card.json").read_bytes() == b"{}" and gets(log) == ["concepts/dog/card.json"]
    assert cache.fetch(url) == new and cache.fetch(URL.replace("models/w.safetensors", "concepts/dog/card.json")).name == "card.json"
    # one object of a folder this process listed: its HEAD is asked again, not the listing's ETag
    s3.pipe({"lcd-test/concepts/dog/card.json": b"{\"v\": 2}"})
    assert cache.fetch_file(f"{url}/card.json").read_bytes() == b'{"v": 2}'


@pytest.mark.parametrize("url, why", [
    ("ftp://host/x", "scheme 'ftp' is not fetched"),
    ("simplecache::s3://lcd-test/x", "chained URLs"),
    ("https://user:secret@host/x", "credentials in a URL are refused"),
    ("s3://lcd-test/a/../../etc/passwd", r"'\.', '\.\.' or '\\' in the URL's path"),
    ("s3://lcd-test/a\x00b", "control characters or NUL"),
    ("file:///etc/passwd", None),  # a local path is the file itself, never copied
])
def test_hostile_urls_are_refused_in_one_line(url, why):
    if why is None:
        assert str(cache.fetch_file(url)) == "/etc/passwd"
        return
    with pytest.raises(NetworkError, match=why) as e:
        cache.fetch_file(url)
    assert "\n" not in str(e.value) and "secret" not in str(e.value)


def test_oversized_objects_and_folders_are_refused_before_any_get(s3):
    s3.pipe({"lcd-test/models/w.safetensors": b"x" * 5000, "lcd-test/big/a": b"x" * 600, "lcd-test/big/b": b"x" * 600})
    small = IoConfig(fetch_max_bytes=1000)
    log = request_log(URL)
    with pytest.raises(NetworkError, match=r"^s3://lcd-test/models/w.safetensors: size 5,000 over the limit of "
                                           r"1,000 bytes \(io.fetch_max_bytes\)$"):
        cache.fetch_file(URL, small)
    with pytest.raises(NetworkError, match=r"^s3://lcd-test/big: 1,200 bytes in all, over the limit"):
        cache.fetch_folder("s3://lcd-test/big", small)
    with pytest.raises(NetworkError, match=r"2 objects, over the limit of 1 \(io.fetch_max_files\)"):
        cache.fetch_folder("s3://lcd-test/big", IoConfig(fetch_max_files=1))
    with pytest.raises(NetworkError, match=r"^s3://lcd-test/nothing/here: file not found"):
        cache.fetch_file("s3://lcd-test/nothing/here")
    assert gets(log) == []


def test_a_folder_holding_a_name_that_escapes_is_refused(s3):
    s3.pipe({"lcd-test/evil/ok.txt": b"1", "lcd-test/evil/a\\..\\..\\x": b"2"})
    with pytest.raises(NetworkError, match=r"^s3://lcd-test/evil: object .* has a name that cannot be a file"):
        cache.fetch_folder("s3://lcd-test/evil")


def test_cache_folder_is_io_cache_dir_then_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LCD_CACHE", str(tmp_path / "env"))
    assert cache.cache_root(None) == tmp_path / "env"
    assert cache.cache_root(IoConfig(cache_dir=str(tmp_path / "cfg"))) == tmp_path / "cfg"
    monkeypatch.delenv("LCD_CACHE")
    assert cache.cache_root(IoConfig()) == cache.Path.home() / ".cache" / "lcd"


def test_http_objects_without_a_version_are_fetched_each_use_and_bad_answers_refused(tmp_path, monkeypatch):
    """Over http(s) (lcd.io.http's deadlines): a server sending neither ETag nor Last-Modified
    gives no way to see a change, so its object is fetched on every use (never a stale hit);
    a size over the limit is refused from the HEAD, before any GET; a cut body is one line."""
    from tests.hostile_http import HostileServer

    monkeypatch.setenv("LCD_CACHE", str(tmp_path / "cache"))
    with HostileServer() as srv:
        a = cache.fetch_file(srv.url("ok/w.safetensors"))
        b = cache.fetch_file(srv.url("ok/w.safetensors"))
        assert a == b and a.read_bytes() == srv.body and srv.gets["ok"] == 2
        with pytest.raises(NetworkError, match=r"/huge/x.ckpt: size 2,000,000,000 over the limit of 1,000 bytes"):
            cache.fetch_file(srv.url("huge/x.ckpt"), IoConfig(fetch_max_bytes=1000))
        assert srv.gets["huge"] == 0
        with pytest.raises(NetworkError, match=r"/short/x.pt: connection closed after"):
            cache.fetch_file(srv.url("short/x.pt"))
        with pytest.raises(NetworkError, match=r"an http\(s\) URL cannot be listed as a folder"):
            cache.fetch_folder(srv.url("ok/folder"))
    assert not list((tmp_path / "cache").rglob("*.tmp"))
