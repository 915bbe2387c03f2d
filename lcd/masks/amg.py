"""Automatic masks for bulk work: SAM's automatic generator, filtered before it upsamples.

segment_anything's `SamAutomaticMaskGenerator` upsamples every candidate of a point batch (64
points x 3 = 192) to the photo's size as float logits, then filters: 9 GB a batch for a 12 MP
photo, and per-mask Python (RLE lists, deep copies) on every survivor. This generator keeps
SAM's settings and their meaning (AutoMaskConfig: point grid, predicted-IoU filter, stability
score with its offset, box NMS, crop layers with crop NMS, min_mask_region_area) and changes
where the work is done:

1. The predicted IoU is read before any mask is upscaled (lcd.masks.amg_decode): candidates
   that fail `pred_iou_thresh` are never upsampled.
2. Stability, binarisation and boxes run in chunks sized to `memory_budget_mb` (decoder
   batches stay SAM's `points_per_batch`: their memory does not grow with the photo), as torch ops
   on the model's device. Where the photo (or crop) is no larger than SAM's working size (long
   side <= img_size, 1024) they run at the photo's size, exactly as stock does, so the masks,
   scores and their order equal stock's. Above it they run at SAM's working resolution (the
   unpadded img_size-long-side logits), and only the masks that survive box NMS are upsampled
   to the photo's size, the stock way (the same bilinear resize of the same logits), so each
   kept mask equals stock's upsampling of that candidate.
3. Survivors are held as their 256x256 low-res logits, kept masks as COCO RLE: memory does
   not grow with the photo's pixel count beyond one chunk.

Output: `AutoMask`s in stock's order (NMS by predicted IoU; crop NMS; small-region pass).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchvision.ops import batched_nms, box_area

from lcd.masks import amg_post as post
from lcd.masks.amg_decode import decode_points
from lcd.masks.config import AutoMaskConfig


@dataclass
class AutoMask:
    """One kept automatic mask. `box` XYXY inclusive pixels of the whole image (stock's
    `bbox` is its XYWH without the +1); `crop_box` XYXY; `point` XY pixels."""

    rle: dict
    box: tuple[int, int, int, int]
    area: int
    predicted_iou: float
    stability_score: float
    point: tuple[float, float]
    crop_box: tuple[int, int, int, int]


@dataclass
class _Kept:
    """Candidates of one crop that passed the filters, point-major (stock's order)."""

    low: torch.Tensor  # (N, h4, w4) float32 logits
    iou: torch.Tensor  # (N,)
    stab: torch.Tensor  # (N,)
    boxes: torch.Tensor  # (N, 4) int64 XYXY in the crop's pixels
    points: np.ndarray  # (N, 2) float64 XY in the crop's pixels

    def take(self, idx: torch.Tensor) -> "_Kept":
        i = idx.to(self.low.device)
        return _Kept(self.low[i], self.iou[i], self.stab[i], self.boxes[i], self.points[idx.cpu().numpy()])


def point_bytes(sam) -> int:
    """Decoder memory per point prompt: the per-point copies of the image side in the two-way
    transformer (~10 of (h*w, C) float32) and the output upscaling to (32, 4h, 4w)."""
    h, w = sam.prompt_encoder.image_embedding_size
    c = sam.prompt_encoder.embed_dim
    return 4 * (10 * h * w * c + 2 * 32 * 16 * h * w)


class BulkMaskGenerator:
    """SAM + AutoMaskConfig -> `generate(image)` -> list[AutoMask] (see the module docstring).

    `predictor` is the SamPredictor (or lcd.masks.predict._EmbedOnce) whose embedding is
    reused: `generate` calls its `set_image` for every crop (a cache hit for the whole image
    when it was embedded already, e.g. for prompts or by a batched encoder pass)."""

    def __init__(self, sam, cfg: AutoMaskConfig, predictor, memory_budget_mb: float = 1024.0):
        from segment_anything.utils.amg import build_all_layer_point_grids

        self.sam, self.cfg, self.predictor = sam, cfg, predictor
        self.budget = float(memory_budget_mb)
        self.grids = build_all_layer_point_grids(cfg.points_per_side, cfg.crop_n_layers,
                                                 cfg.crop_n_points_downscale_factor)
        # decoder batches keep SAM's points_per_batch: CPU GEMMs of very small batches round
        # differently, so another partition can move IoUs by an ulp; the decoder's memory
        # (~point_bytes each) does not grow with the photo, the upsampling does and is budgeted
        self.points_per_call = cfg.points_per_batch
        if cfg.min_mask_region_area > 0:
            import cv2  # noqa: F401 - fail at construction, as SAM does

    @torch.no_grad()
    def generate(self, image: np.ndarray) -> list[AutoMask]:
        """(H, W, 3) uint8 RGB -> the kept masks, in stock SamAutomaticMaskGenerator's order."""
        from segment_anything.utils.amg import generate_crop_boxes

        size = image.shape[:2]
        crop_boxes, layers = generate_crop_boxes(size, self.cfg.crop_n_layers, self.cfg.crop_overlap_ratio)
        out: list[AutoMask] = []
        for box, layer in zip(crop_boxes, layers):
            x0, y0, x1, y1 = box
            self.predictor.set_image(image[y0:y1, x0:x1, :])
            kept = self._crop_candidates(box, layer, size)
            out += self._finish(kept, box, size)
        if len(crop_boxes) > 1 and out:  # 4. stock's crop NMS: smaller crops win
            boxes = torch.tensor([m.box for m in out], dtype=torch.float32)
            scores = 1 / box_area(torch.tensor([m.crop_box for m in out], dtype=torch.float32))
            keep = batched_nms(boxes, scores, torch.zeros(len(out)), iou_threshold=self.cfg.crop_nms_thresh)
            out = [out[i] for i in keep.tolist()]
        if self.cfg.min_mask_region_area > 0 and out:
            out = self._small_regions(out)
        return out

    def _scored(self, layer: int, iou_thresh: float):
        """Yield, per decoder batch of the current crop's grid, the candidates passing
        `iou_thresh`: (low (K, h4, w4), iou (K,), stability (K,), boxes (K, 4) at the work
        size, points (K, 2) crop pixels). Stability and boxes are computed at the crop's own
        size when it is no larger than SAM's working size (stock's arithmetic), else at the
        working size; a chunk of candidates at a time."""
        cfg, p, sam = self.cfg, self.predictor, self.sam
        crop_hw, in_hw, img = tuple(p.original_size), tuple(p.input_size), sam.image_encoder.img_size
        exact = max(crop_hw) <= img
        step = post.chunk_len(self.budget, img, crop_hw if exact else in_hw)
        points = self.grids[layer] * np.array(crop_hw)[None, ::-1]
        for sl in post.chunks(len(points), self.points_per_call):
            # 1. decode: IoU first, then only the candidates that pass it are upscaled
            coords = torch.as_tensor(p.transform.apply_coords(points[sl], crop_hw), device=p.device)
            low, iou, cand = decode_points(sam, p.features, coords, iou_thresh)
            stab, boxes = [iou.new_zeros(0)], [torch.zeros(0, 4, dtype=torch.int64, device=low.device)]
            # 2. stability and boxes, a chunk of candidates at a time
            for ch in post.chunks(len(low), step):
                logits = post.full_logits(low[ch], img, in_hw, crop_hw) if exact else \
                    post.working_logits(low[ch], img, in_hw)
                stab.append(post.stability(logits, sam.mask_threshold, cfg.stability_score_offset))
                boxes.append(post.mask_boxes(logits > sam.mask_threshold))
                del logits
            yield low, iou, torch.cat(stab), torch.cat(boxes), points[sl][(cand // 3).cpu().numpy()]

    def _crop_candidates(self, crop_box: list[int], layer: int, size: tuple[int, int]) -> _Kept:
        """Filter one crop's grid candidates (IoU, stability, crop edge) and box-NMS them."""
        from segment_anything.utils.amg import is_box_near_crop_edge

        cfg, p = self.cfg, self.predictor
        crop_hw, in_hw = tuple(p.original_size), tuple(p.input_size)
        parts: list[_Kept] = []
        for low, iou, stab, boxes, pts in self._scored(layer, cfg.pred_iou_thresh):
            keep = stab >= cfg.stability_score_thresh if cfg.stability_score_thresh > 0.0 else \
                torch.ones_like(stab, dtype=torch.bool)
            parts.append(_Kept(low[keep], iou[keep], stab[keep], boxes[keep], pts[keep.cpu().numpy()]))
        kept = _Kept(torch.cat([k.low for k in parts]), torch.cat([k.iou for k in parts]),
                     torch.cat([k.stab for k in parts]), torch.cat([k.boxes for k in parts]),
                     np.concatenate([k.points for k in parts]))
        if max(crop_hw) > self.sam.image_encoder.img_size:  # working-size boxes -> the crop's pixels
            kept.boxes = post.scale_boxes(kept.boxes, in_hw, crop_hw)
        h, w = size
        if list(crop_box) != [0, 0, w, h]:  # stock: drop masks touching a crop edge inside the image
            edge = is_box_near_crop_edge(kept.boxes, crop_box, [0, 0, w, h])
            kept = kept.take((~edge).nonzero()[:, 0])
        # 3. box NMS by predicted IoU, as stock (its output order is the masks' order)
        order = batched_nms(kept.boxes.float(), kept.iou, torch.zeros(len(kept.iou), device=kept.iou.device),
                            iou_threshold=cfg.box_nms_thresh)
        return kept.take(order)

    def _finish(self, kept: _Kept, crop_box: list[int], size: tuple[int, int]) -> list[AutoMask]:
        """Upsample the kept candidates to the crop's size (stock's resize, chunked), place them
        in the whole image, and encode them as RLE with their boxes and areas."""
        p, img = self.predictor, self.sam.image_encoder.img_size
        crop_hw, in_hw = tuple(p.original_size), tuple(p.input_size)
        step = post.chunk_len(self.budget, img, size)
        x0, y0 = crop_box[0], crop_box[1]
        out: list[AutoMask] = []
        cb = tuple(int(v) for v in crop_box)
        for ch in post.chunks(len(kept.iou), step):
            masks = post.full_logits(kept.low[ch], img, in_hw, crop_hw) > self.sam.mask_threshold
            masks = post.uncrop(masks, crop_box, size)
            boxes = post.mask_boxes(masks).cpu().tolist()
            areas = masks.sum(dim=(1, 2)).cpu().tolist()
            rles = post.encode_masks(masks)
            del masks
            iou, stab = kept.iou[ch].float().cpu().tolist(), kept.stab[ch].float().cpu().tolist()
            for k, rle in enumerate(rles):
                pt = kept.points[ch][k]
                out.append(AutoMask(rle, tuple(int(v) for v in boxes[k]), int(areas[k]), iou[k], stab[k],
                                    (float(pt[0] + x0), float(pt[1] + y0)), cb))
        return out

    def _small_regions(self, masks: list[AutoMask]) -> list[AutoMask]:
        """Stock's postprocess_small_regions: holes and islands under min_mask_region_area are
        removed (cv2, per mask), then box NMS again preferring unchanged masks."""
        from lcd.masks.rle import decode_rle

        nms = max(self.cfg.box_nms_thresh, self.cfg.crop_nms_thresh)
        new, scores, boxes = [], [], []
        for m in masks:
            fixed, changed = post.small_regions(decode_rle(m.rle), self.cfg.min_mask_region_area)
            t = torch.as_tensor(fixed)[None]
            new.append((post.encode_masks(t)[0], int(fixed.sum())) if changed else None)
            boxes.append(post.mask_boxes(t)[0])
            scores.append(0.0 if changed else 1.0)
        keep = batched_nms(torch.stack(boxes).float(), torch.tensor(scores), torch.zeros(len(masks)),
                           iou_threshold=nms)
        out = []
        for i in keep.tolist():
            m = masks[i]
            if new[i] is not None:
                m = AutoMask(new[i][0], tuple(int(v) for v in boxes[i].tolist()), new[i][1], m.predicted_iou,
                             m.stability_score, m.point, m.crop_box)
            out.append(m)
        return out


@torch.no_grad()
def candidate_scores(gen: BulkMaskGenerator, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Predicted IoU and stability of every candidate of the whole image's grid, unfiltered
    (the stability at the size the generator filters at). Random-weight SAMs score all
    candidates alike, so benches and tests set the thresholds at quantiles of these.
    -> (iou (N,), stability (N,)) float64, N = 3 * points_per_side^2."""
    gen.predictor.set_image(image)
    ious, stabs = [], []
    for _, iou, stab, _, _ in gen._scored(0, 0.0):
        ious.append(iou.double().cpu().numpy())
        stabs.append(stab.double().cpu().numpy())
    return np.concatenate(ious), np.concatenate(stabs)
