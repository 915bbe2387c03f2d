"""Regset fixtures: real photos served over HTTP on 127.0.0.1, a URL that never answers, tiny open_clip."""

from __future__ import annotations

import functools
import os
import shutil
import socket
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

# albumentations (imported by img2dataset) checks for updates over the network unless told not to
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

SAMPLES = Path(__file__).resolve().parents[3] / "samples"


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output readable
        pass


def _real_photos(request) -> list[tuple[str, Path]]:
    """(served name, file) of real photos: DreamBench's dog + cat if present, else samples/."""
    try:
        bench = request.getfixturevalue("dreambench")
        photos = [(f"dog_{p.stem}.jpg", p) for p in sorted((bench / "dog").glob("*.jpg"))[:6]]
        photos += [(f"cat_{p.stem}.jpg", p) for p in sorted((bench / "cat").glob("*.jpg"))[:3]]
    except pytest.skip.Exception:
        photos = [(f"dog_{p.stem}.jpg", p) for p in sorted((SAMPLES / "concepts" / "dog").glob("*.jpg"))]
        photos += [(p.name, p) for p in sorted((SAMPLES / "scenes").glob("*.jpg"))]
    return photos


@pytest.fixture
def photo_server(tmp_path, request):
    """Serve real photos (and one text file, notes.txt) from http://127.0.0.1:<port>/.

    Yields (base_url, names): the served photo file names, >= 8 of them, dogs first.
    """
    root = tmp_path / "www"
    root.mkdir()
    names = []
    for name, src in _real_photos(request):
        shutil.copy(src, root / name)
        names.append(name)
    (root / "notes.txt").write_text("this is not an image\n" * 20)
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", names
    server.shutdown()
    server.server_close()


@pytest.fixture
def silent_url():
    """A URL whose server accepts the TCP connection and never sends a byte."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept():
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
                held.append(conn)  # keep it open, never reply
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/never.jpg"
    stop.set()
    t.join(timeout=2)
    for c in held:
        c.close()
    sock.close()


@pytest.fixture(scope="session")
def tiny_open_clip(tmp_path_factory) -> Path:
    """A tiny open_clip folder written by write_tiny_open_clip (cheaper than all tiny models)."""
    from lcd.models.tiny import write_tiny_open_clip

    return write_tiny_open_clip(tmp_path_factory.mktemp("tiny-open-clip") / "open_clip")


@pytest.fixture
def write_shard():
    """write_shard(path, urls, captions, **extra) -> path: a LAION-style metadata Parquet shard."""

    def write(path: Path, urls: list[str], captions: list[str], **extra) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"url": urls, "caption": captions, **extra}), path)
        return path

    return write
