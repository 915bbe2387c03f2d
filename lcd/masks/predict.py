"""SAM masks for one image: the image encoder runs once, every prompt reuses its embedding.

SAM's cost is the ViT image encoder (~0.45 s/image for ViT-H on a GPU); the prompt encoder and
mask decoder are cheap. So an image is embedded once and all of its prompts (points with labels,
boxes) go through `SamPredictor.predict_torch` in batches, grouped by shape so nothing is padded.
The automatic generator (segment_anything's `SamAutomaticMaskGenerator`, settings from
`AutoMaskConfig`) is given the same predictor; `_EmbedOnce` makes its `set_image` of the full
image a cache hit, so automatic + prompted masks cost one encoder pass (crop layers add one per
crop, as in SAM).

Coordinates are pixels of the original image, XY; boxes XYXY. Masks are (H, W) bool.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from lcd.errors import LcdError
from lcd.masks.config import MasksConfig


class PromptError(LcdError):
    """A prompt of the manifest is malformed (wrong shape, labels, or outside the image)."""


@dataclass(frozen=True)
class Prompt:
    """One SAM prompt: foreground/background points, and/or a box, or a text (CLIP-selected)."""

    points: tuple[tuple[float, float], ...] = ()
    labels: tuple[int, ...] = ()
    box: tuple[float, float, float, float] | None = None
    text: str | None = None

    @property
    def source(self) -> str:
        if self.text is not None:
            return "text"
        return "box" if self.box is not None else "point"

    def to_row(self) -> dict[str, Any]:
        return {
            "points": [list(p) for p in self.points] or None,
            "labels": list(self.labels) or None,
            "box": list(self.box) if self.box is not None else None,
            "text": self.text,
        }


def parse_prompt(raw: dict, width: int, height: int, name: str) -> Prompt:
    """Validate one manifest prompt ({"points": [[x, y], ...], "labels": [1, 0, ...]} and/or
    {"box": [x0, y0, x1, y1]}, or {"text": "..."}) against the image size."""
    if not isinstance(raw, dict) or not set(raw) <= {"points", "labels", "box", "text"} or not raw:
        raise PromptError(f"{name}: a prompt is an object with points/labels, box or text; got {raw!r}", item=name)
    if "text" in raw:
        if set(raw) != {"text"} or not isinstance(raw["text"], str) or not raw["text"].strip():
            raise PromptError(f"{name}: a text prompt is {{'text': non-empty string}} alone; got {raw!r}", item=name)
        return Prompt(text=raw["text"])
    pts = np.asarray(raw.get("points", []), dtype=np.float64).reshape(-1, 2) if raw.get("points") else np.zeros((0, 2))
    labels = raw.get("labels", [1] * len(pts))
    if len(labels) != len(pts) or any(lab not in (0, 1) for lab in labels):
        raise PromptError(f"{name}: labels must be 0/1, one per point; got {labels!r} for {len(pts)} points", item=name)
    if len(pts) and ((pts[:, 0] < 0) | (pts[:, 0] >= width) | (pts[:, 1] < 0) | (pts[:, 1] >= height)).any():
        raise PromptError(f"{name}: points {pts.tolist()} fall outside the {width}x{height} image", item=name)
    box = raw.get("box")
    if box is not None:
        b = [float(v) for v in box]
        if len(b) != 4 or not (0 <= b[0] < b[2] <= width and 0 <= b[1] < b[3] <= height):
            raise PromptError(f"{name}: box must be [x0, y0, x1, y1] inside {width}x{height}, x0<x1, y0<y1; got {box!r}", item=name)
        box = tuple(b)
    if not len(pts) and box is None:
        raise PromptError(f"{name}: prompt has neither points nor a box: {raw!r}", item=name)
    return Prompt(tuple(map(tuple, pts.tolist())), tuple(int(v) for v in labels), box)


class MaskRecord:
    """One predicted mask and where it came from. `bbox` is XYWH in pixels.

    The mask is held either as given ((H, W) bool) or as its COCO RLE (`rle=`, with `bbox` and
    `area`), so an image's kept masks cost their run lengths, not H*W bytes each, until read:
    `mask` decodes an RLE-held mask on each access."""

    __slots__ = ("_mask", "rle", "source", "predicted_iou", "stability_score", "prompt", "prompt_index",
                 "multimask_index", "bbox", "area")

    def __init__(self, mask: np.ndarray | None = None, source: str = "auto", predicted_iou: float = 0.0,
                 stability_score: float = 0.0, prompt: Prompt | None = None, prompt_index: int | None = None,
                 multimask_index: int | None = None, *, rle: dict | None = None,
                 bbox: tuple[int, int, int, int] | None = None, area: int | None = None):
        if (mask is None) == (rle is None):
            raise ValueError("MaskRecord: give exactly one of mask or rle")
        self._mask, self.rle = mask, rle
        self.source, self.predicted_iou, self.stability_score = source, predicted_iou, stability_score
        self.prompt, self.prompt_index, self.multimask_index = prompt, prompt_index, multimask_index
        if mask is not None and (bbox is None or area is None):
            ys, xs = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
            area = int(mask.sum())
            bbox = (int(xs[0]), int(ys[0]), int(xs[-1] - xs[0] + 1), int(ys[-1] - ys[0] + 1)) if area else (0, 0, 0, 0)
        if bbox is None or area is None:
            raise ValueError("MaskRecord: an RLE-held mask needs its bbox and area")
        self.bbox, self.area = tuple(int(v) for v in bbox), int(area)

    @property
    def mask(self) -> np.ndarray:
        """(H, W) bool (decoded from the RLE when held as one)."""
        if self._mask is not None:
            return self._mask
        from lcd.masks.rle import decode_rle

        return decode_rle(self.rle)

    @classmethod
    def from_box(cls, rle: dict, box_xyxy, area: int, **kw) -> "MaskRecord":
        """An RLE-held record from an XYXY inclusive box (segment_anything's) and the area."""
        x0, y0, x1, y1 = (int(v) for v in box_xyxy)
        bbox = (x0, y0, x1 - x0 + 1, y1 - y0 + 1) if area else (0, 0, 0, 0)
        return cls(rle=rle, bbox=bbox, area=area, **kw)

    def __repr__(self) -> str:
        return (f"MaskRecord(source={self.source!r}, bbox={self.bbox}, area={self.area}, "
                f"iou={self.predicted_iou:.3f}, stability={self.stability_score:.3f})")


class _EmbedOnce:
    """Wraps a SamPredictor so `set_image` of an already-embedded image is free.

    The generators call `set_image(crop)` (and stock's `reset_image()`); the image's features
    are kept here (keyed by shape + content hash) so both are cache operations. `put` stores an
    embedding computed elsewhere (several images per encoder call, lcd.masks.embed); `dtype` is
    the encoder dtype every miss is embedded with.
    """

    def __init__(self, predictor, dtype: str = "float32"):
        self._p = predictor
        self._key: tuple | None = None
        self._state: tuple | None = None
        self.dtype = dtype
        self.encoder_passes = 0  # images embedded (one per image, whatever the batch)

    def __getattr__(self, name):
        return getattr(self._p, name)

    @staticmethod
    def _key_of(image: np.ndarray) -> tuple:
        return image.shape, hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=16).digest()

    def put(self, image: np.ndarray, emb) -> None:
        """Make `emb` (lcd.masks.embed.Embedding of `image`) the current embedding."""
        p = self._p
        p.features, p.original_size, p.input_size = emb.features, emb.original_size, emb.input_size
        p.is_image_set = True
        self.encoder_passes += 1
        self._key, self._state = self._key_of(image), (p.features, p.original_size, p.input_size)

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        from lcd.masks.embed import embed_images

        if image_format != "RGB":
            raise ValueError(f"image_format must be 'RGB', got {image_format!r}")
        key = self._key_of(image)
        if key == self._key and self._state is not None:
            p = self._p
            p.features, p.original_size, p.input_size = self._state
            p.is_image_set = True
            return
        self.put(image, embed_images(self._p.model, [image], self.dtype)[0])

    def reset_image(self) -> None:
        self._p.reset_image()

    def forget(self) -> None:
        """Drop the cached embedding (call between images to free memory)."""
        self._key = self._state = None
        self._p.reset_image()


class MaskPredictor:
    """SAM + config -> `predict(image, prompts)` returning MaskRecords for one image.

    `cfg.generator` picks the automatic generator: "bulk" (lcd.masks.amg) or "stock"
    (segment_anything's SamAutomaticMaskGenerator); both reuse the predictor's embedding."""

    def __init__(self, sam, cfg: MasksConfig):
        from segment_anything import SamAutomaticMaskGenerator, SamPredictor

        self.cfg = cfg
        self.sam = sam
        self.predictor = _EmbedOnce(SamPredictor(sam), cfg.encoder_dtype)
        self.generator = None
        if cfg.automatic and cfg.generator == "stock":
            self.generator = SamAutomaticMaskGenerator(sam, output_mode="binary_mask", **cfg.auto.model_dump())
            self.generator.predictor = self.predictor  # share the embedding
        elif cfg.automatic:
            from lcd.masks.amg import BulkMaskGenerator

            self.generator = BulkMaskGenerator(sam, cfg.auto, self.predictor, cfg.memory_budget_mb)

    def embed(self, images: Sequence[np.ndarray]) -> list:
        """Several images through the image encoder in one call (lcd.masks.embed) -> their
        Embeddings, to pass to `predict(..., embedding=)`."""
        from lcd.masks.embed import embed_images

        return embed_images(self.sam, images, self.cfg.encoder_dtype)

    @torch.no_grad()
    def _predict_group(self, prompts: Sequence[Prompt], multimask: bool) -> list[list[tuple]]:
        """Prompts of identical shape -> per prompt, per candidate (rle, box XYXY, area, iou,
        stability). Masks are upsampled to the image a memory-budgeted chunk at a time."""
        from lcd.masks import amg_post as post

        p, sam = self.predictor, self.sam
        dev, size = p.device, tuple(p.original_size)
        coords = labels = boxes = None
        if prompts[0].points:
            pts = torch.as_tensor(np.array([pr.points for pr in prompts], dtype=np.float32), device=dev)
            coords = p.transform.apply_coords_torch(pts, size)
            labels = torch.as_tensor(np.array([pr.labels for pr in prompts], dtype=np.int64), device=dev)
        if prompts[0].box is not None:
            bx = torch.as_tensor(np.array([pr.box for pr in prompts], dtype=np.float32), device=dev)
            boxes = p.transform.apply_boxes_torch(bx, size)
        sparse, dense = sam.prompt_encoder(points=(coords, labels) if coords is not None else None, boxes=boxes,
                                           masks=None)
        low, iou = sam.mask_decoder(image_embeddings=p.features, image_pe=sam.prompt_encoder.get_dense_pe(),
                                    sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                    multimask_output=multimask)
        c, flat_low, flat_iou = low.shape[1], low.flatten(0, 1), iou.flatten().float().cpu().tolist()
        img, thr = sam.image_encoder.img_size, sam.mask_threshold
        cands = []
        for ch in post.chunks(len(flat_low), post.chunk_len(self.cfg.memory_budget_mb, img, size)):
            logits = post.full_logits(flat_low[ch], img, tuple(p.input_size), size)
            stab = post.stability(logits, thr, self.cfg.auto.stability_score_offset).float().cpu().tolist()
            masks = logits > thr
            del logits
            bxs, areas = post.mask_boxes(masks).cpu().tolist(), masks.sum(dim=(1, 2)).cpu().tolist()
            cands += list(zip(post.encode_masks(masks), bxs, areas, flat_iou[ch], stab))
        return [cands[i * c:(i + 1) * c] for i in range(len(prompts))]

    def predict(self, image: np.ndarray, prompts: Sequence[Prompt] = (), embedding=None) -> list[MaskRecord]:
        """(H, W, 3) uint8 RGB + prompts -> masks. Text prompts are skipped here (see select.py).
        `embedding`: the image's lcd.masks.embed.Embedding when it was embedded in a batch."""
        # 1. embed the image (the only encoder pass), or take the batch's embedding
        if embedding is not None:
            self.predictor.put(image, embedding)
        else:
            self.predictor.set_image(image)
        records: list[MaskRecord] = []
        # 2. prompted masks, batched per (number of points, has box) so no prompt is padded
        groups: dict[tuple[int, bool], list[int]] = {}
        for i, pr in enumerate(prompts):
            if pr.text is None:
                groups.setdefault((len(pr.points), pr.box is not None), []).append(i)
        for (n_pts, has_box), idx in sorted(groups.items()):
            multimask = self.cfg.multimask and n_pts == 1 and not has_box  # SAM's advice: ambiguous clicks only
            for i, cands in zip(idx, self._predict_group([prompts[i] for i in idx], multimask)):
                for c, (rle, box, area, iou, stab) in enumerate(cands):
                    records.append(MaskRecord.from_box(rle, box, area, source=prompts[i].source, predicted_iou=iou,
                                                       stability_score=stab, prompt=prompts[i], prompt_index=i,
                                                       multimask_index=c if multimask else None))
        # 3. automatic masks on the same embedding
        if self.generator is not None:
            records += self._automatic(image)
        self.predictor.forget()
        return records

    def _automatic(self, image: np.ndarray) -> list[MaskRecord]:
        if self.cfg.generator == "stock":
            out = []
            for m in self.generator.generate(image):
                pt = Prompt(points=tuple(tuple(p) for p in m["point_coords"]), labels=(1,) * len(m["point_coords"]))
                out.append(MaskRecord(m["segmentation"], "auto", float(m["predicted_iou"]),
                                      float(m["stability_score"]), pt))
            return out
        return [MaskRecord.from_box(m.rle, m.box, m.area, source="auto", predicted_iou=m.predicted_iou,
                                    stability_score=m.stability_score, prompt=Prompt(points=(m.point,), labels=(1,)))
                for m in self.generator.generate(image)]
