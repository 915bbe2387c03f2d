"""Each metric on constructed cases with known answers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lcd.errors import LcdError
from lcd.evaluate import metrics as M


def _img(seed=0, shape=(64, 64, 3)):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_clip_t_ranks_images_by_controlled_embeddings():
    text = np.array([1.0, 0.0, 0.0])
    # three images at known angles from the prompt: 0, 60 and 90 degrees
    imgs = np.array([[2.0, 0.0, 0.0], [0.5, np.sqrt(3) / 2, 0.0], [0.0, 0.0, 5.0]])
    scores = M.clip_t(imgs, np.repeat(text[None], 3, axis=0))
    np.testing.assert_allclose(scores, [1.0, 0.5, 0.0], atol=1e-12)
    assert list(np.argsort(-scores)) == [0, 1, 2]
    np.testing.assert_allclose(M.clip_t(imgs, np.repeat(text[None], 3, axis=0), scale=2.5), [2.5, 1.25, 0.0])


def test_clip_t_error_paths():
    with pytest.raises(LcdError, match="pairs image i with text i"):
        M.clip_t(np.ones((2, 3)), np.ones((3, 3)))
    with pytest.raises(LcdError, match="zero norm"):
        M.clip_t(np.zeros((1, 3)), np.ones((1, 3)))
    with pytest.raises(LcdError, match="equal D"):
        M.cosine_matrix(np.ones((1, 3)), np.ones((1, 4)))


def test_identity_similarity_is_mean_over_concept_photos():
    edits = np.array([[1.0, 0.0], [0.0, 1.0]])
    photos = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 3.0]])
    np.testing.assert_allclose(M.identity_similarity(edits, photos), [2 / 3, 1 / 3])


def test_ms_ssim_identical_is_one_and_matches_reference_implementation():
    a = _img(0, (192, 200, 3))
    assert M.ms_ssim(a, a) == (pytest.approx(1.0, abs=1e-6), 5)
    noise = np.random.default_rng(1).integers(-40, 40, a.shape)
    b = np.clip(a.astype(int) + noise, 0, 255).astype(np.uint8)
    ref, levels = M.ms_ssim(a, b)  # pytorch_msssim
    assert levels == 5 and ref < 0.999
    assert M.ms_ssim_levels(a, b, 5) == pytest.approx(ref, abs=1e-4)  # our loop == reference


def test_ms_ssim_small_images_use_fewer_scales_or_refuse():
    a = _img(2)
    b = np.clip(a.astype(int) + 30, 0, 255).astype(np.uint8)
    assert M.msssim_levels(64) == 3 and M.msssim_levels(161) == 5 and M.msssim_levels(160) == 4
    v, levels = M.ms_ssim(a, a)
    assert (v, levels) == (pytest.approx(1.0), 3)
    assert M.ms_ssim(a, b)[0] < 1.0
    with pytest.raises(LcdError, match="larger than 160 px"):
        M.ms_ssim(a, b, small="error")
    with pytest.raises(LcdError, match="too small for even one scale"):
        M.ms_ssim(_img(3, (10, 10, 3)), _img(3, (10, 10, 3)))
    with pytest.raises(LcdError, match="equal shapes"):
        M.ms_ssim(a, a[:32])


def test_psnr_identical_is_infinite_and_json_safe_says_inf():
    assert M.psnr_from_mse(0.0) == math.inf
    assert M.psnr_from_mse(255.0**2) == pytest.approx(0.0)
    assert M.psnr_from_mse(1.0) == pytest.approx(48.1308, abs=1e-4)
    doc = M.json_safe({"psnr": math.inf, "neg": -math.inf, "nan": math.nan, "x": np.float32(0.5), "l": [math.inf]})
    assert doc == {"psnr": "inf", "neg": "-inf", "nan": "nan", "x": 0.5, "l": ["inf"]}
    json.dumps(doc, allow_nan=False)  # strict JSON
    with pytest.raises(LcdError, match="MSE must be >= 0"):
        M.psnr_from_mse(-1.0)


def test_score_edits_records_unscorable_items_instead_of_raising(embedders):
    from lcd.evaluate.config import EvaluateConfig
    from lcd.evaluate.scoring import ConceptTable, EditRecord, score_edits

    rng = np.random.default_rng(0)
    ref = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    mask = np.zeros((64, 64), bool)
    mask[10:30, 10:30] = True
    concepts = ConceptTable(embedders, {"c": [ref]})
    good = EditRecord("good", ref, ref, mask, "a dog", "c")
    empty = EditRecord("empty", ref, ref, np.zeros_like(mask), "a dog", "c")
    cfg = EvaluateConfig(msssim_small="error")  # 64 px cannot take 5 scales
    fails: list = []
    assert score_edits([good, empty], concepts, embedders, None, cfg, failures=fails) == []
    assert [f["item"] for f in fails] == ["empty", "good"] and "larger than 160 px" in fails[1]["error"]
    rows = score_edits([good, empty], concepts, embedders, None, EvaluateConfig(), failures=fails)
    assert [r["name"] for r in rows] == ["good"] and rows[0]["bg_psnr"] == math.inf and rows[0]["clip_i"] == pytest.approx(1.0)
    with pytest.raises(LcdError, match="empty: mask is empty"):
        score_edits([empty], concepts, embedders, None, EvaluateConfig())


def test_background_exclude_px_leaves_out_the_blend_ring(embedders):
    from lcd.evaluate.config import EvaluateConfig
    from lcd.evaluate.scoring import ConceptTable, EditRecord, score_edits

    rng = np.random.default_rng(1)
    ref = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    mask = np.zeros((64, 64), bool)
    mask[20:40, 20:40] = True
    from lcd.masks.morphology import dilate

    edit = ref.copy()
    edit[dilate(mask, 2)] = 0  # a 2 px ring outside the mask changed too
    concepts = ConceptTable(embedders, {"c": [ref]})
    rec = EditRecord("r", edit, ref, mask, "a dog", "c")
    strict = score_edits([rec], concepts, embedders, None, EvaluateConfig())[0]
    ringless = score_edits([rec], concepts, embedders, None, EvaluateConfig(background_exclude_px=2))[0]
    assert strict["bg_mse"] > 0 and ringless["bg_mse"] == 0.0 and ringless["bg_psnr"] == math.inf
