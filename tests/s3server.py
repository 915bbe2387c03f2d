"""A real S3 API server on 127.0.0.1 for tests (moto's ThreadedMotoServer, as in
tests/tasks/test_edit_s3.py), and a count of the requests lcd's S3 client sends to it.

Use: `from tests.s3server import s3, s3_endpoint, request_log  # noqa: F401` in a test module;
the `s3` fixture yields an s3fs filesystem with bucket `lcd-test` made, the AWS_* variables of the
process pointing at the server.
"""

from __future__ import annotations

import pytest

BUCKET = "lcd-test"


@pytest.fixture(scope="session")
def s3_endpoint():
    """One moto server per pytest process (its start costs ~0.5 s); tests reset its state."""
    from moto.server import ThreadedMotoServer

    srv = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    srv.start()
    host, port = srv.get_host_and_port()
    yield f"http://{host}:{port}"
    srv.stop()


@pytest.fixture
def s3(s3_endpoint, monkeypatch, tmp_path):
    """An s3fs filesystem on an empty server with bucket `lcd-test`; AWS_* point at it and
    LCD_CACHE is a fresh folder of this test."""
    import urllib.request

    urllib.request.urlopen(urllib.request.Request(f"{s3_endpoint}/moto-api/reset", method="POST"), timeout=10).close()
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": s3_endpoint,
                 "LCD_CACHE": str(tmp_path / "lcd-cache")}.items():
        monkeypatch.setenv(k, v)
    import fsspec

    fsspec.filesystem("s3").clear_instance_cache()  # a fresh client for this server's endpoint
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.makedirs(BUCKET, exist_ok=True)
    yield fs
    fsspec.filesystem("s3").clear_instance_cache()


def request_log(url: str, operations: tuple[str, ...] = ("GetObject", "HeadObject", "ListObjectsV2")) -> list[tuple[str, str]]:
    """A list that gets (operation, key or prefix) of every request of `operations` the S3
    client behind `url` (lcd.io.storage's cached s3fs instance) sends from now on: what a read
    costs, counted from the client's own events."""
    from lcd.io import storage

    fs, _ = storage.filesystem(url)
    fs.connect()
    log: list[tuple[str, str]] = []
    for op in operations:
        fs.s3.meta.events.register(f"provide-client-params.s3.{op}",
                                   lambda params, op=op, **kw: log.append((op, params.get("Key") or params.get("Prefix"))))
    return log


def gets(log: list[tuple[str, str]]) -> list[str]:
    """The keys of the GetObject requests in a request_log."""
    return [k for op, k in log if op == "GetObject"]
