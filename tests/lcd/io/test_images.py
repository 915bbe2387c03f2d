"""Image and mask reading: every odd format to RGB, every bad file named in its error."""

import numpy as np
import pytest
from PIL import Image

from lcd.errors import InputImageError
from lcd.io.images import check_mask_fits, load_image, load_mask, read_png_meta, save_png


def test_exif_orientation_is_applied(tmp_path):
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :20] = 255  # left half white
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 CW on display
    im.save(tmp_path / "o.jpg", exif=exif, quality=100)
    out = load_image(tmp_path / "o.jpg")
    assert out.shape == (40, 20, 3)
    assert out[:20].mean() > 200 and out[20:].mean() < 50  # white half now on top


@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "I;16", "LA", "CMYK"])
def test_modes_become_rgb_uint8(tmp_path, mode):
    base = Image.fromarray(np.random.RandomState(0).randint(0, 256, (16, 24, 3), dtype=np.uint8))
    if mode == "I;16":
        im = Image.fromarray((np.arange(16 * 24).reshape(16, 24) * 170).astype(np.uint16))
    else:
        im = base.convert(mode)
    path = tmp_path / ("x.tif" if mode == "CMYK" else "x.png")
    im.save(path)
    out = load_image(path)
    assert out.shape == (16, 24, 3) and out.dtype == np.uint8
    if mode == "I;16":
        assert out[..., 0].max() > 200  # scaled from 16 bits, not clipped to 255


def test_rgba_composited_on_white(tmp_path):
    a = np.zeros((4, 4, 4), np.uint8)
    Image.fromarray(a, "RGBA").save(tmp_path / "t.png")
    assert (load_image(tmp_path / "t.png") == 255).all()


def test_mask_nonzero_is_edit(tmp_path):
    m = np.zeros((8, 8), np.uint8)
    m[2:4, 2:4] = 7
    Image.fromarray(m).save(tmp_path / "m.png")
    out = load_mask(tmp_path / "m.png")
    assert out.dtype == bool and out.sum() == 4


def test_missing_corrupt_nonimage_and_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    good = tmp_path / "g.png"
    Image.new("RGB", (64, 64)).save(good)
    (tmp_path / "trunc.png").write_bytes(good.read_bytes()[:60])
    with pytest.raises(InputImageError, match=r"nope\.png: file not found"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(InputImageError, match=r"notes\.txt: not an image file"):
        load_image(tmp_path / "notes.txt")
    with pytest.raises(InputImageError, match=r"trunc\.png: corrupt or truncated"):
        load_image(tmp_path / "trunc.png")
    with pytest.raises(InputImageError, match="is a directory"):
        load_mask(tmp_path)


def test_mask_size_mismatch_names_both(tmp_path):
    with pytest.raises(InputImageError, match=r"m\.png: mask is 5x4 but image i\.png is 3x2"):
        check_mask_fits(np.zeros((2, 3, 3), np.uint8), np.zeros((4, 5), bool), "i.png", "m.png")


def test_png_metadata_round_trip_and_a1111_chunk(tmp_path):
    meta = {"prompt": "a cat", "seed": 3, "steps": 60, "guidance": 6.0, "size": "512x512", "model": "m", "model_hash": "abc"}
    p = save_png(tmp_path / "out.png", np.zeros((4, 4, 3), np.uint8), meta)
    assert read_png_meta(p)["seed"] == 3
    params = Image.open(p).info["parameters"]
    assert params.startswith("a cat\nSteps: 60, Sampler: DDIM, CFG scale: 6.0, Seed: 3")
    assert not list(tmp_path.glob(".*tmp"))  # no temp file left behind


def test_atomic_outputs_get_the_umask_mode_not_mkstemps_0600(tmp_path):
    import os
    import stat

    from lcd.io.images import save_png

    old = os.umask(0o027)
    try:
        p = save_png(tmp_path / "o.png", np.zeros((4, 4, 3), np.uint8))
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o640
    finally:
        os.umask(old)
    p = save_png(tmp_path / "o2.png", np.zeros((4, 4, 3), np.uint8))
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o666 & ~old
