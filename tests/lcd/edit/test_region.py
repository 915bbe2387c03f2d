"""Pure mask geometry: alpha is exactly 0 beyond dilate+feather, crops cover the mask."""

import numpy as np
import pytest

from lcd.edit import region
from lcd.masks import morphology


def _disk_mask(h=80, w=120, cy=40, cx=60, r=10):
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_feather_alpha_band():
    m = _disk_mask()
    a = morphology.feather_alpha(m, dilate_px=3, feather_px=4)
    assert a.dtype == np.float32 and a.max() == 1.0
    assert (a[m] == 1).all()
    core = morphology.dilate(m, 3)
    assert (a[core] == 1).all()
    # beyond dilate + feather (+1 px for the ellipse kernel's rounding) alpha is exactly zero
    far = ~morphology.dilate(m, 3 + 4 + 1)
    assert (a[far] == 0).all()
    ring = (a > 0) & (a < 1)
    assert ring.any() and not (ring & m).any()


def test_zero_radii_keep_the_mask():
    m = _disk_mask()
    assert np.array_equal(morphology.feather_alpha(m, 0, 0) > 0, m)


@pytest.mark.parametrize("shape", [(80, 120), (300, 90), (64, 64), (1000, 700)])
def test_crop_box_covers_mask_and_is_square(shape):
    h, w = shape
    m = np.zeros(shape, bool)
    m[h // 3 : h // 2, w // 4 : w // 2] = True
    box = region.crop_box(m.astype(np.float32), 64, 0.25)
    ys, xs = np.nonzero(m)
    assert box.x0 <= xs.min() and box.x1 > xs.max() and box.y0 <= ys.min() and box.y1 > ys.max()
    assert box.side <= max(h, w)


def test_extract_pads_outside_and_paste_only_touches_alpha():
    img = np.random.RandomState(0).randint(0, 256, (50, 90, 3), dtype=np.uint8)
    box = region.CropBox(-5, -20, 90)
    crop = region.extract(img, box)
    assert crop.shape == (90, 90, 3)
    assert np.array_equal(crop[20:70, 5:90], img[:, :85])
    alpha = np.zeros((50, 90), np.float32)
    alpha[10:20, 10:20] = 0.5
    patch = np.zeros((90, 90, 3), np.uint8)
    out = region.paste(img, patch, alpha, box)
    assert np.array_equal(out[alpha == 0], img[alpha == 0])
    assert np.array_equal(out[10:20, 10:20], np.round(img[10:20, 10:20] * 0.5).astype(np.uint8))


def test_feather_alpha_in_a_window_equals_the_whole_image_computation():
    """The windowed computation (mask bbox + dilate + feather + 2) against the distance transform
    of the whole image: same zero set, values within 1e-6 (OpenCV's precise transform rounds
    differently on other image sizes), for masks touching edges and several blobs."""
    rng = np.random.RandomState(0)
    for _ in range(25):
        h, w = rng.randint(5, 160, 2)
        m = np.zeros((h, w), bool)
        for _ in range(rng.randint(0, 4)):
            y, x = rng.randint(0, h), rng.randint(0, w)
            m[y : y + rng.randint(1, 40), x : x + rng.randint(1, 40)] = True
        d, f = rng.randint(0, 12, 2)
        a, b = morphology.feather_alpha(m, d, f), morphology._feather_whole(m, d, f)
        assert np.array_equal(a > 0, b > 0) and np.abs(a - b).max() <= 1e-6
