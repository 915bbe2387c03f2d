"""Selecting the edit region: rules, point, box, and CLIP text (controlled and end to end)."""

import numpy as np
import pytest

from lcd.masks.select import (
    SelectionError,
    mask_crop,
    parse_selection,
    pick_by_text,
    select_by_text,
    select_index,
    text_scores,
)


@pytest.fixture
def three():
    """Three masks on 20x30: a big left block, a small square (best score), a right strip."""
    m = np.zeros((3, 20, 30), bool)
    m[0, :, :15] = True
    m[1, 2:6, 20:24] = True
    m[2, :, 26:] = True
    kw = dict(
        area=m.sum(axis=(1, 2)), predicted_iou=np.array([0.5, 0.9, 0.9]), stability=np.array([0.9, 0.8, 0.95]),
        bboxes=np.array([[0, 0, 15, 20], [20, 2, 4, 4], [26, 0, 4, 20]]), mask_ids=np.array([0, 1, 2]), masks=m,
    )
    return m, kw


def test_rules_point_box_id(three):
    _, kw = three
    assert select_index(parse_selection("largest"), **kw) == 0
    assert select_index(parse_selection("best"), **kw) == 2  # iou tie 0.9 broken by stability
    assert select_index(parse_selection("id:1"), **kw) == 1
    assert select_index(parse_selection("point:21,3"), **kw) == 1
    assert select_index(parse_selection("point:3,10"), **kw) == 0
    assert select_index(parse_selection("box:19,1,25,7"), **kw) == 1
    assert select_index(parse_selection("box:25,0,30,20"), **kw) == 2


@pytest.mark.parametrize("spec, match", [
    ("biggest", "expected largest | best"), ("point:1", "expected largest"), ("box:1,2,3", "expected"),
    ("box:5,5,1,9", "box needs x0<x1 and y0<y1"), ("text:  ", "expected"), ("id:x", "expected"),
])
def test_bad_selection_specs(spec, match):
    with pytest.raises(SelectionError, match=match):
        parse_selection(spec)


def test_selections_that_match_nothing(three):
    _, kw = three
    with pytest.raises(SelectionError, match=r"im: no stored mask contains point \(17, 10\)"):
        select_index(parse_selection("point:17,10"), name="im", **kw)
    with pytest.raises(SelectionError, match=r"point \(40.0, 1.0\) is outside the 30x20 image"):
        select_index(parse_selection("point:40,1"), name="im", **kw)
    with pytest.raises(SelectionError, match="no stored mask overlaps box"):
        select_index(parse_selection("box:16,8,19,19"), name="im", **kw)
    with pytest.raises(SelectionError, match="no mask_id 7"):
        select_index(parse_selection("id:7"), name="im", **kw)
    with pytest.raises(SelectionError, match="text selection needs the image and a CLIP model"):
        select_index(parse_selection("text:a dog"), name="im", **kw)
    empty = {k: v[:0] for k, v in kw.items()}
    with pytest.raises(SelectionError, match="im: has no stored masks"):
        select_index(parse_selection("best"), name="im", **empty)


def test_text_scoring_picks_the_mask_whose_embedding_matches():
    rng = np.random.default_rng(0)
    text = rng.normal(size=16)
    crops = rng.normal(size=(5, 16))
    crops[3] = 7.0 * text + 0.01 * rng.normal(size=16)  # same direction, other norm: cosine ~ 1
    s = text_scores(crops, text)
    assert s.shape == (5,) and s[3] == pytest.approx(1.0, abs=1e-3) and np.all(s[[0, 1, 2, 4]] < 0.9)
    assert pick_by_text(crops, text)[0] == 3
    assert pick_by_text(crops, -text)[0] != 3


def test_mask_crop_greys_the_outside():
    img = np.full((20, 30, 3), 200, np.uint8)
    m = np.zeros((20, 30), bool)
    m[5:10, 5:15] = True
    m[5, 5] = False
    crop = mask_crop(img, m, (5, 5, 10, 5), margin=0.2)
    assert crop.shape == (7, 14, 3)
    assert (crop[1, 2] == 127).all() and (crop[2, 3] == 200).all()


def test_text_selection_end_to_end_with_tiny_clip(tiny_clip, three):
    m, kw = three
    rng = np.random.default_rng(0)
    img = (rng.random((20, 30, 3)) * 255).astype(np.uint8)
    k, score = select_by_text(img, m, kw["bboxes"], "a photo of a dog", tiny_clip)
    assert 0 <= k < 3 and -1.0 <= score <= 1.0
    # the pick is the argmax of the scores the model gives (the decision is the pure function)
    from lcd.masks.select import embed_crops, embed_text

    crops = [mask_crop(img, mm, b, 0.1) for mm, b in zip(m, kw["bboxes"])]
    e = embed_crops(tiny_clip, crops)
    assert e.shape == (3, 32)
    assert k == int(np.argmax(text_scores(e, embed_text(tiny_clip, "a photo of a dog"))))
    assert select_index(parse_selection("text:a photo of a dog"), text_pick=lambda: k, **kw) == k


def test_params_refuse_a_bad_default_selection(tmp_path):
    from lcd.config import load_params
    from lcd.errors import LcdError

    (tmp_path / "p.yaml").write_text("masks:\n  select: biggest\n")
    with pytest.raises(LcdError, match=r"masks.select: .*expected largest \| best"):
        load_params(tmp_path / "p.yaml")
    (tmp_path / "q.yaml").write_text("masks:\n  auto:\n    points_per_sid: 4\n")
    with pytest.raises(LcdError, match=r"masks.auto.points_per_sid"):
        load_params(tmp_path / "q.yaml")
