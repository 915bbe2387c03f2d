"""Tensor post-processing of SAM mask candidates: upsampling in chunks, stability, boxes, RLE.

Every step is one torch op over a chunk of candidates, on the model's device; nothing loops
per mask except turning the kept masks' run lengths into COCO strings. The arithmetic is
segment_anything's (`Sam.postprocess_masks`, `utils.amg.calculate_stability_score`,
`batched_mask_to_box`), so a candidate's logits, scores and boxes here equal the stock ones.

Shapes: low-res logits (N, h4, w4) float32 (256x256 for SAM); masks (N, H, W); boxes (N, 4)
XYXY inclusive pixel indices, int64, as segment_anything's; RLE {"size": [H, W], "counts": str}
in pycocotools' compressed format (lcd.masks.rle).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from lcd.masks.rle import counts_to_string

MB = 1 << 20


def working_logits(low: torch.Tensor, img_size: int, input_size: tuple[int, int]) -> torch.Tensor:
    """(N, h4, w4) -> (N, h_in, w_in) logits at SAM's working resolution: upsampled to the
    padded img_size square and unpadded, the first half of `Sam.postprocess_masks`."""
    x = F.interpolate(low[:, None], (img_size, img_size), mode="bilinear", align_corners=False)
    return x[..., : input_size[0], : input_size[1]][:, 0]


def full_logits(low: torch.Tensor, img_size: int, input_size: tuple[int, int],
                size: tuple[int, int]) -> torch.Tensor:
    """(N, h4, w4) -> (N, H, W) logits at `size`, exactly `Sam.postprocess_masks` (the second
    bilinear resize is skipped when it is the identity: a scale-1 resize returns its input)."""
    x = working_logits(low, img_size, input_size)
    if tuple(size) == tuple(input_size):
        return x
    return F.interpolate(x[:, None], tuple(size), mode="bilinear", align_corners=False)[:, 0]


def chunk_len(budget_mb: float, img_size: int, size: tuple[int, int]) -> int:
    """Candidates upsampled at once so a chunk fits `budget_mb`: per candidate the padded
    img_size^2 float map, the H x W float logits, their copy in the second resize and three
    H x W bool maps (the stability cutoffs and the mask)."""
    per = 4 * img_size * img_size + 8 * size[0] * size[1] + 3 * size[0] * size[1]
    return max(1, int(budget_mb * MB // per))


def chunks(n: int, size: int) -> Iterator[slice]:
    for s in range(0, n, size):
        yield slice(s, min(n, s + size))


def stability(logits: torch.Tensor, threshold: float, offset: float) -> torch.Tensor:
    """segment_anything's stability score: IoU of the masks cut at threshold +- offset.
    (N, H, W) -> (N,) float32 (the same int16/int32 sums, so the same values)."""
    from segment_anything.utils.amg import calculate_stability_score

    return calculate_stability_score(logits, threshold, offset)


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """(N, H, W) bool -> (N, 4) XYXY int64, zeros for an empty mask (segment_anything's)."""
    from segment_anything.utils.amg import batched_mask_to_box

    return batched_mask_to_box(masks)


def scale_boxes(boxes: torch.Tensor, src: tuple[int, int], dst: tuple[int, int]) -> torch.Tensor:
    """XYXY pixel boxes of an (h, w) mask -> the box the same mask covers upsampled to dst:
    pixel i spans [i * s, (i + 1) * s) there. Used for NMS at working resolution only; stored
    boxes come from the upsampled masks themselves."""
    sy, sx = dst[0] / src[0], dst[1] / src[1]
    scale = torch.tensor([sx, sy, sx, sy], dtype=torch.float64, device=boxes.device)
    lo = torch.floor(boxes[:, :2].double() * scale[:2])
    hi = torch.ceil((boxes[:, 2:].double() + 1) * scale[2:]) - 1
    out = torch.cat([lo, hi], dim=1)
    out[:, 2].clamp_(max=dst[1] - 1), out[:, 3].clamp_(max=dst[0] - 1)
    return out.to(torch.int64)


def run_lengths_batch(masks: torch.Tensor) -> list[np.ndarray]:
    """(N, H, W) bool -> N int64 run-length arrays in COCO's order (column-major, a 0-run
    first), from one diff and one nonzero over the whole chunk."""
    n, h, w = masks.shape
    flat = masks.transpose(1, 2).reshape(n, h * w)
    change = (flat[:, 1:] != flat[:, :-1]).nonzero()  # (M, 2): (mask, position), row-major sorted
    per = torch.bincount(change[:, 0], minlength=n).cpu().numpy()
    pos = (change[:, 1] + 1).cpu().numpy()
    first = flat[:, 0].cpu().numpy()
    out = []
    for k, p in enumerate(np.split(pos, np.cumsum(per)[:-1])):
        bounds = np.concatenate(([0], p, [h * w]))
        c = np.diff(bounds)
        out.append(np.concatenate(([0], c)) if first[k] else c)
    return out


def encode_masks(masks: torch.Tensor) -> list[dict]:
    """(N, H, W) bool -> N COCO compressed RLEs (byte-identical to pycocotools')."""
    h, w = masks.shape[-2:]
    return [{"size": [int(h), int(w)], "counts": counts_to_string(c)} for c in run_lengths_batch(masks)]


def uncrop(masks: torch.Tensor, crop_box: list[int], size: tuple[int, int]) -> torch.Tensor:
    """Masks of a crop -> masks of the whole image (zero outside the crop), as SAM's uncrop_masks."""
    from segment_anything.utils.amg import uncrop_masks

    return uncrop_masks(masks, crop_box, size[0], size[1])


def small_regions(mask: np.ndarray, min_area: int) -> tuple[np.ndarray, bool]:
    """SAM's min_mask_region_area step on one mask: fill holes, then drop islands smaller than
    `min_area` (cv2 connected components: one call per mask, as in SAM). -> (mask, changed)."""
    from segment_anything.utils.amg import remove_small_regions

    m, c1 = remove_small_regions(mask, min_area, mode="holes")
    m, c2 = remove_small_regions(m, min_area, mode="islands")
    return m, bool(c1 or c2)
