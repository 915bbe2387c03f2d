"""The bulk automatic mask generator (lcd.masks.amg) against segment_anything's stock one.

Two random-weight SAMs: the tiny SAM of lcd.models.tiny (SAM's real 1024 px working size and
full decoder), and `sam256`, SAM's classes at a 256 px working size (a 16x16 embedding: the
decoder is 16x cheaper, so grids, crop layers and photos larger than the working size run in
seconds). Random weights give logits of |x| < 2, which SAM's stability offset of 1.0 turns into
near-zero scores; the hypernetworks' last layers are scaled up so the scores spread like real
SAM's, and the thresholds are set at quantiles of the candidates' own scores so each filter
really removes candidates.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch

from lcd.masks.amg import BulkMaskGenerator, candidate_scores
from lcd.masks.amg_decode import decode_points
from lcd.masks.config import AutoMaskConfig
from lcd.masks.rle import decode_rle


def _spread_logits(sam, k: float = 20.0):
    with torch.no_grad():
        for mlp in sam.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(k)
            mlp.layers[-1].bias.mul_(k)
    return sam


@pytest.fixture(scope="module")
def sam256():
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    torch.manual_seed(0)
    enc = ImageEncoderViT(img_size=256, patch_size=16, embed_dim=32, depth=1, num_heads=2, mlp_ratio=4,
                          out_chans=256, qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                          use_rel_pos=True, window_size=14, global_attn_indexes=[0])
    sam = Sam(enc, PromptEncoder(embed_dim=256, image_embedding_size=(16, 16), input_image_size=(256, 256),
                                 mask_in_chans=16),
              MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(depth=2, embedding_dim=256,
                                                                                 mlp_dim=2048, num_heads=8),
                          transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256),
              pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375])
    return _spread_logits(sam.eval())


@pytest.fixture(scope="module")
def tiny_spread(tiny_dir):
    from lcd.models.loader import load_sam

    sam, _ = load_sam(tiny_dir / "sam" / "sam_vit_tiny.pth", "vit_tiny")
    return _spread_logits(sam)


def _photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A structured RGB photo: a DreamBench-like subject (bright ellipse) on a smooth gradient."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    img = np.stack([xx * 200 // w, yy * 200 // h, np.full((h, w), 90)], -1).astype(np.float64)
    inside = ((yy - h * 0.55) / (h * 0.3)) ** 2 + ((xx - w * 0.45) / (w * 0.25)) ** 2 < 1
    img[inside] = [230, 180, 40]
    return np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)


def _quantile_cfg(sam, image, keep_iou=0.5, keep_stab=0.5, **kw) -> AutoMaskConfig:
    """SAM's settings with the two thresholds at quantiles of this image's candidates."""
    from segment_anything import SamPredictor

    base = AutoMaskConfig(pred_iou_thresh=0.0, stability_score_thresh=0.0, **kw)
    iou, stab = candidate_scores(BulkMaskGenerator(sam, base, SamPredictor(sam)), image)
    t_iou = float(np.quantile(iou, 1 - keep_iou))
    t_stab = float(np.quantile(stab[iou > t_iou], 1 - keep_stab))
    return base.model_copy(update={"pred_iou_thresh": t_iou, "stability_score_thresh": t_stab})


def _stock(sam, cfg: AutoMaskConfig, image):
    from segment_anything import SamAutomaticMaskGenerator

    return SamAutomaticMaskGenerator(sam, output_mode="coco_rle", **cfg.model_dump()).generate(image)


def _ours(sam, cfg: AutoMaskConfig, image, budget=64):
    from segment_anything import SamPredictor

    return BulkMaskGenerator(sam, cfg, SamPredictor(sam), budget).generate(image)


def _assert_same(ref: list[dict], ours) -> None:
    assert len(ours) == len(ref) > 0
    for a, b in zip(ref, ours):  # same masks, same scores, same order
        assert b.rle["counts"] == a["segmentation"]["counts"] and b.rle["size"] == a["segmentation"]["size"]
        assert (b.predicted_iou, b.stability_score) == (a["predicted_iou"], a["stability_score"])
        assert list(b.point) == a["point_coords"][0] and b.area == a["area"]
        x0, y0, w, h = a["bbox"]
        assert b.box == (x0, y0, x0 + w, y0 + h) and list(b.crop_box) == [a["crop_box"][0], a["crop_box"][1],
                                                                            a["crop_box"][0] + a["crop_box"][2],
                                                                            a["crop_box"][1] + a["crop_box"][3]]


def test_decoder_equals_sam_predict_torch_bit_for_bit(sam256):
    from segment_anything import SamPredictor

    p = SamPredictor(sam256)
    p.set_image(_photo(200, 256))
    pts = np.random.default_rng(0).random((10, 2)) * [256, 200]
    coords = torch.as_tensor(p.transform.apply_coords(pts, (200, 256)))
    with torch.no_grad():
        _, iou, low = p.predict_torch(coords[:, None], torch.ones(10, 1, dtype=torch.int), multimask_output=True,
                                      return_logits=True)
        mine, mine_iou, cand = decode_points(sam256, p.features, coords, 0.0)
        assert torch.equal(mine, low.flatten(0, 1)) and torch.equal(mine_iou, iou.flatten())
        thr = float(iou.flatten().median())
        kept, kept_iou, cand = decode_points(sam256, p.features, coords, thr)
    keep = iou.flatten() > thr
    assert 0 < len(cand) < 30 and torch.equal(cand, keep.nonzero()[:, 0])
    assert torch.equal(kept, low.flatten(0, 1)[keep]) and torch.equal(kept_iou, iou.flatten()[keep])


def test_equal_to_stock_on_the_tiny_sam_at_working_size(tiny_spread):
    """A 1024x768 photo (SAM's working size): the same masks, scores and order as stock."""
    image = _photo(768, 1024)
    cfg = _quantile_cfg(tiny_spread, image, points_per_side=2, box_nms_thresh=0.95)
    _assert_same(_stock(tiny_spread, cfg, image), _ours(tiny_spread, cfg, image))


@pytest.mark.parametrize("kw", [dict(points_per_side=4), dict(points_per_side=2, crop_n_layers=1),
                                dict(points_per_side=3, min_mask_region_area=40)],
                         ids=["grid", "crop-layers", "small-regions"])
def test_equal_to_stock_below_working_size(sam256, kw):
    image = _photo(192, 256, seed=1)
    cfg = _quantile_cfg(sam256, image, box_nms_thresh=0.9, **kw)
    ref = _stock(sam256, cfg, image)
    _assert_same(ref, _ours(sam256, cfg, image))
    _assert_same(ref, _ours(sam256, cfg, image, budget=1e-3))  # one candidate per chunk: same


def test_larger_photo_keeps_masks_that_are_stock_upsamplings(sam256):
    """A 1000x760 photo on a 256 px SAM: filtered at working size, and every kept mask equals
    stock's full-size upsampling of the same candidate (same point, same IoU)."""
    from segment_anything import SamPredictor

    image = _photo(760, 1000, seed=2)
    # box NMS off (IoU > 1 never happens): random weights' masks all span the frame, so NMS
    # would keep one; without it every survivor of the two filters is compared
    cfg = _quantile_cfg(sam256, image, points_per_side=4, box_nms_thresh=1.0)
    ours = _ours(sam256, cfg, image)
    ref = _stock(sam256, cfg, image)
    assert len(ours) > 3 and abs(len(ours) - len(ref)) <= max(1, len(ref) // 10)
    # stock's candidates at full size: the same grid in one decoder call, as stock batches it
    p = SamPredictor(sam256)
    p.set_image(image)
    grid = BulkMaskGenerator(sam256, cfg, p).grids[0] * np.array([[1000, 760]])
    with torch.no_grad():
        logits, iou, _ = p.predict_torch(torch.as_tensor(p.transform.apply_coords(grid, (760, 1000)))[:, None],
                                         torch.ones(len(grid), 1, dtype=torch.int), multimask_output=True,
                                         return_logits=True)
    for m in ours:
        j = int(np.flatnonzero((grid == np.array(m.point)).all(1))[0])
        k = int(torch.nonzero(iou[j] == m.predicted_iou)[0, 0])
        assert np.array_equal(decode_rle(m.rle), (logits[j, k] > 0).numpy())
    # the kept set is stock's up to candidates whose scores sit at a threshold
    same = {r["segmentation"]["counts"] for r in ref} & {m.rle["counts"] for m in ours}
    assert len(same) >= 0.8 * len(ref)
