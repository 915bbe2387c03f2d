"""lcd.io.encode: the fast PNG writer and lossless WebP are lossless at every setting, other
readers open them, and the metadata comes back from both."""

import io
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from lcd.io import encode as enc
from lcd.io.images import read_png_meta, save_output, save_png


def _photo_like(h=61, w=83):
    """Smooth gradients plus noise: the filters and deflate have real work (not all zeros)."""
    rng = np.random.default_rng(1)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 3, y * 4, (x + y) * 2], axis=2) % 256
    return np.clip(base + rng.integers(-20, 20, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("level", range(10))
def test_png_is_lossless_at_every_level_and_other_readers_agree(level, monkeypatch):
    monkeypatch.setattr(enc, "FILTER_BLOCK", 1000)  # several blocks of rows per image
    for a in (_photo_like(), np.random.default_rng(level).integers(0, 256, (7, 5, 3), dtype=np.uint8),
              np.zeros((1, 1, 3), np.uint8)):
        data = enc.encode_png(a, {"lcd": "{}"}, level)
        with Image.open(io.BytesIO(data)) as im:
            assert im.format == "PNG" and im.mode == "RGB" and np.array_equal(np.asarray(im), a)
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)  # libpng checks every CRC
        assert np.array_equal(bgr[..., ::-1], a)


def test_png_without_isal_falls_back_to_zlib_and_stays_valid(monkeypatch):
    a = _photo_like()
    monkeypatch.setattr(enc, "_fast_zlib", None)
    data = enc.encode_png(a, None, 1)
    with Image.open(io.BytesIO(data)) as im:
        assert np.array_equal(np.asarray(im), a)


def test_up_filter_rows_reconstruct_the_image_in_any_block_size():
    a = _photo_like(9, 4)
    f = np.concatenate(list(enc.up_filtered(a)))
    for rows in (1, 2, 4, 9, 100):
        assert np.array_equal(np.concatenate(list(enc.up_filtered(a, rows))), f)
    assert f.shape == (9, 13) and (f[:, 0] == 2).all()
    rows = np.cumsum(f[:, 1:].astype(np.int64), axis=0) % 256  # undo Up: running sum down the columns
    assert np.array_equal(rows.astype(np.uint8).reshape(a.shape), a)


def test_png_text_chunks_latin1_and_unicode_read_back_by_pillow():
    data = enc.encode_png(_photo_like(), {"parameters": "a photo of [P] dög", "note": "snow ☃"}, 1)
    with Image.open(io.BytesIO(data)) as im:
        assert im.info["parameters"] == "a photo of [P] dög" and im.info["note"] == "snow ☃"
    kinds = []
    pos = 8
    while pos < len(data):  # walk the chunks: tEXt for Latin-1, iTXt otherwise, CRCs valid
        n = int.from_bytes(data[pos : pos + 4], "big")
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]
        assert int.from_bytes(data[pos + 8 + n : pos + 12 + n], "big") == zlib.crc32(kind + body)
        kinds.append(kind)
        pos += 12 + n
    assert kinds[0] == b"IHDR" and kinds[1:3] == [b"tEXt", b"iTXt"] and kinds[-1] == b"IEND"


def test_encode_png_refuses_other_arrays():
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        enc.encode_png(np.zeros((4, 4), np.uint8))


@pytest.mark.parametrize("method", [0, 4])
def test_webp_is_lossless_and_carries_both_metadata_texts(tmp_path, method):
    a = _photo_like()
    meta = {"prompt": "a <b> & [P] dog ☃", "seed": 7, "steps": 60, "guidance": 6.0, "input_hash": "ab" * 32}
    p = save_output(tmp_path / "o.webp", a, meta, "webp", webp_method=method)
    with Image.open(p) as im:
        assert im.format == "WEBP" and np.array_equal(np.asarray(im.convert("RGB")), a)
        assert enc.read_parameters(im).startswith("a <b> & [P] dog ☃\nSteps: 60, Sampler: DDIM, CFG scale: 6.0, Seed: 7")
    assert read_png_meta(p) == meta
    assert not list(tmp_path.glob(".*tmp"))


def test_save_png_takes_the_fast_path_for_rgb_and_pillow_for_masks(tmp_path):
    a, m = _photo_like(), np.eye(16, dtype=bool)
    p = save_png(tmp_path / "a.png", a, {"seed": 2}, compress_level=1)
    q = save_png(tmp_path / "m.png", m)
    assert read_png_meta(p)["seed"] == 2 and np.array_equal(np.asarray(Image.open(p)), a)
    with Image.open(q) as im:
        assert im.mode == "1" and np.array_equal(np.asarray(im), m)
