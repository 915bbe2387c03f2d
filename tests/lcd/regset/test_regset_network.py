"""Regset's network reads under the `io` deadlines: a metadata shard by URL that hangs, drips or
is cut short is one LcdError line naming it within its deadline (fsspec's aiohttp waited 300 s,
twice); img2dataset gets the stricter of regset.timeout_s and io's first-byte limit."""

from __future__ import annotations

import io
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lcd.errors import LcdError
from lcd.io.config import IoConfig
from lcd.regset.build import download_timeout_s
from lcd.regset.config import RegsetConfig
from lcd.regset.sources import read_shard
from tests.hostile_http import HostileServer

FAST = IoConfig(http_connect_timeout_s=1, http_first_byte_timeout_s=1, http_total_timeout_s=2)


@pytest.fixture
def srv():
    buf = io.BytesIO()
    pq.write_table(pa.table({"url": ["http://a/1.jpg", None], "caption": ["a dog", "x"]}), buf)
    with HostileServer(body=buf.getvalue(), drip_s=0.2) as s:
        yield s


def test_a_shard_by_url_is_read_within_the_limits(srv):
    shard = read_shard(srv.url("ok/meta.parquet"), limits=FAST)
    assert (shard.urls, shard.captions, shard.dropped) == (["http://a/1.jpg"], ["a dog"], 1)


@pytest.mark.parametrize("mode, said, deadline", [
    ("never", "no answer in 1 s", 1.0),
    ("slow", "body exceeded 2 s", 2.0),
    ("short", "connection closed after", 0.3),
    ("huge", "size 2,000,000,000 over the limit", 0.3),
])
def test_a_shard_url_that_misbehaves_is_one_line_naming_it_in_time(srv, mode, said, deadline):
    url = srv.url(f"{mode}/meta.parquet")
    t0 = time.monotonic()
    with pytest.raises(LcdError, match=rf"^cannot read shard {url}: {said}") as ei:
        read_shard(url, limits=FAST)
    assert time.monotonic() - t0 < deadline + 1.0 and "\n" not in str(ei.value) and ei.value.item == url


def test_a_missing_shard_url_says_not_found(srv):
    with pytest.raises(LcdError, match=r"/404/m\.parquet: cannot read shard: not found$"):
        read_shard(srv.url("404/m.parquet"), limits=FAST)


def test_img2dataset_gets_the_stricter_per_read_timeout():
    cfg = RegsetConfig(timeout_s=10)
    assert download_timeout_s(cfg, None) == 10
    assert download_timeout_s(cfg, IoConfig()) == 10  # io's 30 s first byte: regset's 10 s is stricter
    assert download_timeout_s(cfg, FAST) == 1


@pytest.mark.slow  # importing clip-retrieval's client takes seconds
def test_a_clip_back_that_never_answers_fails_in_the_total_deadline(srv):
    """ClipClient's own timeout is 3600 s per read; the query is given up at io.http_total_timeout_s."""
    from lcd.errors import NetworkError
    from lcd.regset.sources import query_clip_back

    import clip_retrieval.clip_client  # noqa: F401 - imported before the clock starts

    url = srv.url("never/knn-service")
    t0 = time.monotonic()
    with pytest.raises(NetworkError, match=rf"^{url}: no complete answer in 2 s$"):
        query_clip_back(url, "regset", "a dog", 10, FAST)
    assert time.monotonic() - t0 < 2 + 1.0
    with pytest.raises(LcdError, match=r"/404/knn-service: clip back query failed: JSONDecodeError"):
        query_clip_back(srv.url("404/knn-service"), "regset", "a dog", 10, FAST)
