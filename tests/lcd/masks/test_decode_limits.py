"""The masks stage's image decoder refuses a pixel bomb from its header (it decoded 625 MP to 7 GB)."""

import io
import time
import warnings

import pytest
from PIL import Image

from lcd.errors import InputImageError
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
