"""The masks stage's image reads: a pixel bomb refused from its header (it decoded 625 MP to 7 GB);
folders, FIFOs and oversized files refused from their stat, before a byte is read."""

import io
import re
import time
import warnings

import pytest
from PIL import Image

from lcd.errors import InputImageError, LcdError
from lcd.masks.manifest import decode_image


def test_a_1bit_png_bomb_is_refused_before_decoding():
    buf = io.BytesIO()
    Image.new("1", (25_000, 25_000)).save(buf, format="PNG")
    assert len(buf.getvalue()) < 200_000  # tiny on disk
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(InputImageError, match=r"bomb\.png: 25000x25000 is 625 MP, above the limit of 200 MP"):
            decode_image(buf.getvalue(), "bomb.png")
    assert time.perf_counter() - t0 < 2.0  # the header only: decoding took tens of seconds
    assert not [w for w in seen if issubclass(w.category, Image.DecompressionBombWarning)]  # one line, no warning
    with pytest.raises(InputImageError, match="x.png: not an image file"):
        decode_image(b"not an image", "x.png")


def test_fetch_bytes_names_folders_fifos_oversize_and_missing_files_and_never_blocks(tmp_path):
    import os

    from lcd.masks.manifest import fetch_bytes

    (tmp_path / "dir.png").mkdir()
    os.mkfifo(tmp_path / "fifo.png")  # reading it would block forever: it must be refused from its stat
    (tmp_path / "big.png").write_bytes(b"\0" * 2048)
    cases = {"dir.png": "a directory; expected an image file", "fifo.png": "not a regular file (FIFO",
             "big.png": "2048 bytes, above the limit of 1024", "nope.png": "file not found"}
    for name, needle in cases.items():
        with pytest.raises(LcdError, match=re.escape(needle)) as e:
            fetch_bytes(str(tmp_path / name), f"id-{name}", max_bytes=1024)
        assert str(e.value).startswith(f"id-{name}: ") and e.value.item == f"id-{name}"
    assert fetch_bytes(str(tmp_path / "big.png"), "ok") == b"\0" * 2048  # under the default limit
