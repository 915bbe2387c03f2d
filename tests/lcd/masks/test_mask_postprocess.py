"""Post-processing: holes filled (not border bays), dilation, feathered PNG export."""

import numpy as np
from PIL import Image

from lcd.masks.morphology import fill_holes
from lcd.masks.postprocess import mask_alpha, postprocess_mask, save_mask_png


def ring():
    m = np.zeros((20, 20), bool)
    m[4:16, 4:16] = True
    m[8:12, 8:12] = False  # a hole
    m[4:16, 0:3] = True
    m[6:8, 0] = False  # a notch open to the border: not a hole
    return m


def test_fill_holes_fills_enclosed_background_only():
    m = ring()
    f = fill_holes(m)
    assert f[8:12, 8:12].all() and not f[6:8, 0].any() and not f[0].any()
    assert (f | m).sum() == f.sum() and f.sum() == m.sum() + 16
    assert not m[8:12, 8:12].any()  # input untouched
    assert np.array_equal(fill_holes(np.zeros((5, 5), bool)), np.zeros((5, 5), bool))


def test_postprocess_dilates_and_png_feathers(tmp_path):
    m = np.zeros((30, 30), bool)
    m[10:20, 10:20] = True
    d = postprocess_mask(m, fill=True, dilate_px=2)
    assert d[8, 15] and not d[7, 15] and d.sum() > m.sum()
    a = mask_alpha(m, fill=True, dilate_px=0, feather_px=4)
    assert a[15, 15] == 1.0 and 0 < a[15, 21] < 1 and a[15, 26] == 0
    p = save_mask_png(tmp_path / "m.png", a)
    back = np.asarray(Image.open(p))
    assert back.dtype == np.uint8 and back[15, 15] == 255 and back[0, 0] == 0 and 0 < back[15, 21] < 255
    p2 = save_mask_png(tmp_path / "b.png", m)
    assert np.array_equal(np.asarray(Image.open(p2)) > 0, m)
