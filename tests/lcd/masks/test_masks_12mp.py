"""The masks store's read checks at a real photo's size: masks of a 4000x3000 (12 MP) photo, with
the many short runs a SAM mask of a real photo has, read by the run-length paths that never decode
(areas, point membership, the windowed parse) and by selection, equal to the decoded masks."""

from __future__ import annotations

import numpy as np
import pytest

from lcd.masks.read import select_mask
from lcd.masks.rle import decode_rles, encode_rle, rle_summaries, rles_contain
from lcd.masks.store import write_part

H, W = 3000, 4000  # a 12 MP photo


def _photo_masks(n: int = 3, seed: int = 0) -> np.ndarray:
    """(n, H, W) bool: blobs with ragged edges (thousands of runs per mask), of different sizes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.ogrid[:H, :W]
    out = np.zeros((n, H, W), bool)
    for k in range(n):
        cy, cx, r = rng.integers(600, 2400), rng.integers(600, 3400), 250 * (k + 1)
        edge = rng.integers(-40, 40, size=(H, 1))  # a ragged outline, row by row
        out[k] = (yy - cy) ** 2 + (xx - cx + edge) ** 2 < r * r
    return out


@pytest.mark.slow
def test_12mp_masks_read_without_decoding_equal_the_decoded_ones(tmp_path):
    masks = _photo_masks()
    counts = [encode_rle(m)["counts"] for m in masks]
    assert min(len(c) for c in counts) > 2000  # long strings: several windows of the parser
    areas = rle_summaries(counts, H, W)
    assert areas.tolist() == [int(m.sum()) for m in masks]
    rng = np.random.default_rng(1)
    for y, x in zip(rng.integers(0, H, 50), rng.integers(0, W, 50)):
        assert rles_contain(counts, H, W, int(y), int(x)).tolist() == masks[:, y, x].tolist()
    assert np.array_equal(decode_rles(counts, H, W), masks)
    # through a store part and selection, with the image's own size checked
    rows = []
    for k, (m, c) in enumerate(zip(masks, counts)):
        ys, xs = np.nonzero(m)
        rows.append({"image_id": "photo", "image": "photo.jpg", "image_sha256": "ab" * 32, "width": W, "height": H,
                     "mask_id": k, "source": "auto", "prompt_index": None, "multimask_index": None, "prompt": None,
                     "rle": {"size": [H, W], "counts": c}, "bbox": [int(xs.min()), int(ys.min()),
                     int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)], "area": int(m.sum()),
                     "predicted_iou": 0.9 - 0.1 * k, "stability_score": 0.95,
                     "model": {"type": "vit_tiny", "ref": "r", "sha256": "s", "revision": None}})
    listing = [{"image_id": "photo", "image_sha256": "ab" * 32, "width": W, "height": H, "n_masks": 3, "settings": "k"}]
    write_part(tmp_path / "store", rows, listing, {}, 1024, codec="zstd", level=1)
    largest, row = select_mask(tmp_path / "store", "photo", "largest", image_size=(H, W))
    assert row["mask_id"] == int(np.argmax(masks.sum((1, 2)))) and np.array_equal(largest, masks[row["mask_id"]])
    y, x = map(int, np.argwhere(masks[0])[0])
    inside, row = select_mask(tmp_path / "store", "photo", f"point:{x},{y}", image_size=(H, W))
    assert masks[row["mask_id"], y, x] and np.array_equal(inside, masks[row["mask_id"]])
    with pytest.raises(Exception, match=r"stored masks are 4000x3000 but the image is 4032x3024"):
        select_mask(tmp_path / "store", "photo", "largest", image_size=(3024, 4032))
