"""One encoder pass per image whatever the prompts; batched prompts = prompts run one by one."""

import numpy as np
import pytest

from lcd.masks.config import MasksConfig
from lcd.masks.predict import MaskPredictor, PromptError, parse_prompt

RAW = [
    {"points": [[20, 15]]},
    {"points": [[40, 10]], "labels": [0]},
    {"points": [[5, 5], [30, 20]], "labels": [0, 1]},
    {"box": [8, 6, 45, 32]},
    {"box": [1, 1, 20, 20]},
    {"points": [[12, 12]], "box": [2, 2, 30, 30]},
]


@pytest.fixture
def image():
    rng = np.random.default_rng(0)
    a = (rng.random((48, 64, 3)) * 80).astype(np.uint8)
    a[8:30, 10:40] = 230
    return a


def test_one_encoder_pass_per_image_with_prompts_and_automatic_masks(tiny_sam, fast_cfg, image):
    sam, _ = tiny_sam
    calls = []
    hook = sam.image_encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        mp = MaskPredictor(sam, fast_cfg)
        prompts = [parse_prompt(r, 64, 48, "im") for r in RAW]
        recs = mp.predict(image, prompts)
        assert len(calls) == 1
        recs2 = mp.predict(image[::-1].copy(), prompts[:1])
        assert len(calls) == 2 and mp.predictor.encoder_passes == 2
    finally:
        hook.remove()
    # single clicks give SAM's 3 candidates; other prompts one mask; plus 2x2 automatic points
    by_src = {s: sum(r.source == s for r in recs) for s in ("point", "box", "auto")}
    assert by_src["point"] == 3 + 3 + 1 and by_src["box"] == 3
    assert by_src["auto"] >= 1
    assert {r.prompt_index for r in recs if r.source != "auto"} == set(range(len(RAW)))
    assert len(recs2) == 3 + sum(r.source == "auto" for r in recs2)
    for r in recs:
        assert r.mask.shape == (48, 64) and r.mask.dtype == bool and r.area == int(r.mask.sum())


def test_batched_prompts_equal_sam_predict_one_by_one(tiny_sam, image):
    from segment_anything import SamPredictor

    sam, _ = tiny_sam
    cfg = MasksConfig(automatic=False)
    prompts = [parse_prompt(r, 64, 48, "im") for r in RAW]
    recs = MaskPredictor(sam, cfg).predict(image, prompts)
    ref = SamPredictor(sam)
    ref.set_image(image)
    for i, pr in enumerate(prompts):
        mine = [r for r in recs if r.prompt_index == i]
        masks, scores, _ = ref.predict(
            point_coords=np.array(pr.points, dtype=np.float32) if pr.points else None,
            point_labels=np.array(pr.labels) if pr.points else None,
            box=np.array(pr.box, dtype=np.float32) if pr.box else None,
            multimask_output=len(mine) == 3,
        )
        assert len(mine) == len(masks)
        for r, m, s in zip(mine, masks, scores):
            assert (r.mask != m).mean() < 1e-3  # same masks up to float noise at the threshold
            assert r.predicted_iou == pytest.approx(float(s), abs=1e-4)


@pytest.mark.parametrize(
    "raw, match",
    [
        ({"points": [[70, 5]]}, r"im: points \[\[70.0, 5.0\]\] fall outside the 64x48 image"),
        ({"points": [[1, 1]], "labels": [2]}, "labels must be 0/1, one per point"),
        ({"points": [[1, 1]], "labels": [1, 1]}, "labels must be 0/1, one per point"),
        ({"box": [10, 10, 5, 20]}, r"box must be \[x0, y0, x1, y1\] inside 64x48"),
        ({"box": [0, 0, 10]}, "box must be"),
        ({"box": None}, "neither points nor a box"),
        ({"text": ""}, "text prompt is"),
        ({"text": "dog", "box": [0, 0, 1, 1]}, "text prompt is"),
        ({"colour": "red"}, "a prompt is an object"),
        ([1, 2], "a prompt is an object"),
    ],
)
def test_bad_prompts_are_errors_naming_the_item(raw, match):
    with pytest.raises(PromptError, match=match):
        parse_prompt(raw, 64, 48, "im")
