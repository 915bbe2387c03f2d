"""Choosing the edit region among an image's stored masks: by point, box, rule or text.

Selection spec strings (CLI and params): `largest`, `best` (highest predicted IoU, then stability),
`id:N` (mask_id), `point:X,Y` (best-scoring mask containing the pixel), `box:X0,Y0,X1,Y1` (mask
whose bbox has the highest IoU with the box), `text:<words>` (CLIP: each mask's crop scored
against the text, the best kept — the 'text-predicted region' of the paper's ablation).

The CLIP scoring is split so the decision is a pure function (`text_scores`, `pick_by_text`) that
tests drive with constructed embeddings; `embed_crops` / `embed_text` run the model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from lcd.errors import LcdError

RULES = ("largest", "best")


class SelectionError(LcdError):
    """A selection spec is malformed, or no stored mask satisfies it."""


@dataclass(frozen=True)
class Selection:
    kind: str  # largest | best | id | point | box | text
    point: tuple[float, float] | None = None
    box: tuple[float, float, float, float] | None = None
    text: str | None = None
    mask_id: int | None = None


_NUM = r"-?\d+(?:\.\d+)?"


def parse_selection(spec: str) -> Selection:
    """'largest' | 'best' | 'id:N' | 'point:X,Y' | 'box:X0,Y0,X1,Y1' | 'text:words' -> Selection."""
    s = spec.strip()
    if s in RULES:
        return Selection(s)
    kind, _, arg = s.partition(":")
    if kind == "id" and re.fullmatch(r"\d+", arg):
        return Selection("id", mask_id=int(arg))
    if kind == "point" and re.fullmatch(rf"{_NUM},{_NUM}", arg):
        x, y = (float(v) for v in arg.split(","))
        return Selection("point", point=(x, y))
    if kind == "box" and re.fullmatch(rf"{_NUM},{_NUM},{_NUM},{_NUM}", arg):
        b = tuple(float(v) for v in arg.split(","))
        if not (b[0] < b[2] and b[1] < b[3]):
            raise SelectionError(f"select: box needs x0<x1 and y0<y1, got {spec!r}", item="select")
        return Selection("box", box=b)  # type: ignore[arg-type]
    if kind == "text" and arg.strip():
        return Selection("text", text=arg.strip())
    raise SelectionError(
        f"select: expected largest | best | id:N | point:X,Y | box:X0,Y0,X1,Y1 | text:WORDS, got {spec!r}",
        item="select",
    )


def _best(iou: np.ndarray, stab: np.ndarray, candidates: np.ndarray) -> int:
    """Highest predicted IoU, ties broken by stability score, then by lower index."""
    order = np.lexsort((-stab[candidates], -iou[candidates]))
    return int(candidates[order[0]])


def bbox_iou(bboxes_xywh: np.ndarray, box_xyxy: Sequence[float]) -> np.ndarray:
    """(N, 4) XYWH boxes vs one XYXY box -> (N,) IoU."""
    b = np.asarray(bboxes_xywh, dtype=np.float64).reshape(-1, 4)
    x0, y0, x1, y1 = b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    ix = np.clip(np.minimum(x1, box_xyxy[2]) - np.maximum(x0, box_xyxy[0]), 0, None)
    iy = np.clip(np.minimum(y1, box_xyxy[3]) - np.maximum(y0, box_xyxy[1]), 0, None)
    inter = ix * iy
    union = b[:, 2] * b[:, 3] + (box_xyxy[2] - box_xyxy[0]) * (box_xyxy[3] - box_xyxy[1]) - inter
    return inter / np.maximum(union, 1e-9)


def select_index(
    sel: Selection,
    *,
    area: np.ndarray,
    predicted_iou: np.ndarray,
    stability: np.ndarray,
    bboxes: np.ndarray,
    mask_ids: np.ndarray,
    masks: np.ndarray | None = None,
    text_pick=None,
    name: str = "image",
    shape: tuple[int, int] | None = None,
    point_hits=None,
) -> int:
    """Row index of the selected mask, from the per-mask columns. `point` needs the masks' (H, W)
    `shape` and `point_hits(x, y) -> (N,) bool` (which masks hold the pixel: read off the stored
    run lengths, lcd.masks.rle.rles_contain), or `masks` (N, H, W) for both; `text_pick` is a
    callable () -> index for `text` (it needs the image and CLIP, see select_by_text). A score
    the rows do not store (NaN) ranks last for `best`."""
    n = len(area)
    if n == 0:
        raise SelectionError(f"{name}: has no stored masks to select from", item=name)
    iou, stab = np.nan_to_num(np.asarray(predicted_iou, float), nan=-np.inf), \
        np.nan_to_num(np.asarray(stability, float), nan=-np.inf)
    if sel.kind == "largest":
        return int(np.argmax(area))
    if sel.kind == "best":
        return _best(iou, stab, np.arange(n))
    if sel.kind == "id":
        hit = np.flatnonzero(np.asarray(mask_ids) == sel.mask_id)
        if not hit.size:
            raise SelectionError(f"{name}: no mask_id {sel.mask_id} (has 0..{n - 1})", item=name)
        return int(hit[0])
    if sel.kind == "point":
        x, y = int(sel.point[0]), int(sel.point[1])
        h, w = masks.shape[1:] if masks is not None else shape
        if not (0 <= x < w and 0 <= y < h):
            raise SelectionError(f"{name}: point {sel.point} is outside the {w}x{h} image", item=name)
        inside = np.flatnonzero(masks[:, y, x] if masks is not None else point_hits(x, y))
        if not inside.size:
            raise SelectionError(f"{name}: no stored mask contains point ({x}, {y})", item=name)
        return _best(iou, stab, inside)
    if sel.kind == "box":
        ious = bbox_iou(bboxes, sel.box)
        if ious.max() <= 0:
            raise SelectionError(f"{name}: no stored mask overlaps box {sel.box}", item=name)
        return int(np.argmax(ious))
    if sel.kind == "text":
        if text_pick is None:
            raise SelectionError(f"{name}: text selection needs the image and a CLIP model", item=name)
        return int(text_pick())
    raise SelectionError(f"{name}: unknown selection kind {sel.kind!r}", item=name)


# --- CLIP text selection -----------------------------------------------------------------------

def text_scores(crop_embeds: np.ndarray, text_embed: np.ndarray) -> np.ndarray:
    """(N, D) crop embeddings, (D,) text embedding -> (N,) cosine similarities (pure)."""
    a = np.asarray(crop_embeds, dtype=np.float64)
    t = np.asarray(text_embed, dtype=np.float64).reshape(-1)
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    t = t / max(np.linalg.norm(t), 1e-12)
    return a @ t


def pick_by_text(crop_embeds: np.ndarray, text_embed: np.ndarray) -> tuple[int, float]:
    """Index and score of the crop most similar to the text."""
    s = text_scores(crop_embeds, text_embed)
    k = int(np.argmax(s))
    return k, float(s[k])


def mask_crop(image: np.ndarray, mask: np.ndarray, bbox_xywh: Sequence[int], margin: float) -> np.ndarray:
    """The mask's box (grown by `margin` of its side) with pixels outside the mask set to grey,
    so CLIP judges the region's content rather than its surroundings. -> (h, w, 3) uint8."""
    H, W = mask.shape
    x, y, w, h = (int(v) for v in bbox_xywh)
    if w <= 0 or h <= 0:
        return np.full((1, 1, 3), 127, np.uint8)
    mx, my = int(round(w * margin)), int(round(h * margin))
    x0, y0, x1, y1 = max(x - mx, 0), max(y - my, 0), min(x + w + mx, W), min(y + h + my, H)
    crop = image[y0:y1, x0:x1].copy()
    crop[~mask[y0:y1, x0:x1]] = 127
    return crop


def embed_crops(clip, crops: Sequence[np.ndarray]) -> np.ndarray:
    """CLIP image embeddings of crops -> (N, D) float32. `clip` is (CLIPModel, CLIPProcessor)."""
    import torch

    model, processor = clip
    with torch.no_grad():
        inputs = processor(images=list(crops), return_tensors="pt").to(model.device)
        return model.get_image_features(**inputs).float().cpu().numpy()


def embed_text(clip, text: str) -> np.ndarray:
    """CLIP text embedding -> (D,) float32."""
    import torch

    model, processor = clip
    with torch.no_grad():
        inputs = processor(text=[text], return_tensors="pt", padding=True).to(model.device)
        return model.get_text_features(**inputs).float().cpu().numpy()[0]


def select_by_text(image: np.ndarray, masks, bboxes, text: str, clip, margin: float = 0.1) -> tuple[int, float]:
    """(H, W, 3) image, (N, H, W) masks (or any iterable of (H, W) masks: a generator decoding one
    at a time keeps one mask in memory) -> (index, cosine score) of the mask that best matches text."""
    crops = [mask_crop(image, m, b, margin) for m, b in zip(masks, bboxes)]
    return pick_by_text(embed_crops(clip, crops), embed_text(clip, text))
