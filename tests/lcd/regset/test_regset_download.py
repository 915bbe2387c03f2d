"""img2dataset against real photos on a 127.0.0.1 HTTP server: good ones land, bad ones say why."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from PIL import Image

from lcd.regset.download import DownloadStore, check_image


def _jpeg(size, mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, 128).save(buf, format="PNG" if mode != "RGB" else "JPEG")
    return buf.getvalue()


def test_check_image_accepts_rgb_of_the_right_size():
    assert check_image(_jpeg((64, 64)), size=64, min_size=32) is None


@pytest.mark.parametrize(
    "data, match",
    [
        (b"not an image at all", "cannot decode"),
        (_jpeg((64, 64))[:200], "cannot decode"),  # truncated JPEG
        (_jpeg((64, 64), "L"), "mode L"),
        (_jpeg((16, 16)), "smaller than min_image_size"),
        (_jpeg((64, 48)), "expected 64x64"),
    ],
)
def test_check_image_rejects_with_reason(data, match):
    reason = check_image(data, size=64, min_size=32)
    assert reason is not None and match in reason


@pytest.mark.server
@pytest.mark.slow
def test_download_real_photos_records_failures_and_caches(tmp_path, photo_server, silent_url):
    base, names = photo_server
    good = [f"{base}/{n}" for n in names[:5]]
    bad = {
        f"{base}/missing-1.jpg": "404",
        f"{base}/missing-2.jpg": "404",
        f"{base}/notes.txt": "decoding error",  # served fine (200), but not an image
        silent_url: "timed out",
    }
    urls = good + list(bad)
    caps = [f"caption {i}" for i in range(len(urls))]
    store = DownloadStore(tmp_path / "store")
    t0 = time.monotonic()
    rep = store.fetch(urls, caps, image_size=64, timeout_s=2, threads=4, min_image_size=32)
    elapsed = time.monotonic() - t0
    assert elapsed < 60, f"download of 9 URLs took {elapsed:.0f}s: something waited past the timeout"
    assert rep.attempted == len(urls) and rep.cached == 0
    by_url = {r["url"]: r for r in rep.rows}
    assert [r["url"] for r in rep.rows] == urls  # input order kept
    for u in good:
        r = by_url[u]
        assert r["status"] == "success", r
        im = Image.open(store.image_path(r))
        assert im.size == (64, 64) and im.mode == "RGB"
        assert np.asarray(im).std() > 5  # a real photo, not a blank
    for u, reason in bad.items():
        r = by_url[u]
        assert r["status"] == "failed" and r["file"] is None
        assert r["error"], r
        assert reason.lower() in r["error"].lower(), r
    # second run: everything answered from the store, img2dataset is not called
    rep2 = DownloadStore(tmp_path / "store").fetch(urls, caps, image_size=64, timeout_s=2, threads=4)
    assert rep2.attempted == 0 and rep2.cached == len(urls)
    assert rep2.rows == rep.rows
    # retry_failed re-tries exactly the failures
    rep3 = store.fetch(urls, caps, image_size=64, timeout_s=2, threads=4, retry_failed=True)
    assert rep3.attempted == len(bad)
