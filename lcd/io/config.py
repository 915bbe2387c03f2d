"""`io` section of params.yaml: the deadlines and the size limit of every network read, and the
per-machine fetch cache (lcd.io.cache) with its bounds.

Why: the libraries underneath wait too long by default. urllib's timeout is per read (a server
sending a byte every two seconds holds a reader for hours); aiohttp's is 300 s, spent twice by
fsspec (its size probe, then the read). One section, passed to every reader (edit-batch inputs,
`lcd masks compute`, regset shards and downloads), bounds each URL's wait.
"""

from __future__ import annotations

from pydantic import Field

from lcd.config_base import StrictConfig


class IoConfig(StrictConfig):
    """Limits of one HTTP(S) read (a GET or a HEAD, redirects included).

    `http_connect_timeout_s`: to open the TCP (and TLS) connection; `http_first_byte_timeout_s`:
    from the request sent to the answer's first byte, and the longest pause allowed inside a
    body; `http_total_timeout_s`: the whole transfer, from the connect to the body's last byte
    (it also caps the other two: a total of 2 s with the default 30 s first byte waits 2 s);
    `http_max_bytes`: the largest body read (a Content-Length above it is refused before any
    body byte is read; without one, the read stops at the limit).
    """

    http_connect_timeout_s: float = Field(10.0, gt=0, le=3600)
    http_first_byte_timeout_s: float = Field(30.0, gt=0, le=3600)
    http_total_timeout_s: float = Field(120.0, gt=0, le=86_400)
    http_max_bytes: int = Field(1 << 30, ge=1)  # 1 GiB: no photo, mask or manifest row is bigger

    # the per-machine fetch cache (lcd.io.cache: model weights, concept folders, masks footers
    # read from URLs): its folder (None: $LCD_CACHE, else ~/.cache/lcd); the largest object, and
    # the largest folder in all, fetched (64 GiB: SDXL in float32 is ~14 GB); the most objects in
    # one fetched folder; the whole fetch of one object, and the longest wait for another process
    # fetching the same object
    cache_dir: str | None = None
    fetch_max_bytes: int = Field(1 << 36, ge=1)
    fetch_max_files: int = Field(10_000, ge=1)
    fetch_timeout_s: float = Field(3600.0, gt=0, le=86_400)
