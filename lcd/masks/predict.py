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
from dataclasses import dataclass, field
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


@dataclass
class MaskRecord:
    """One predicted mask and where it came from. `bbox` is XYWH in pixels."""

    mask: np.ndarray
    source: str  # auto | point | box | text
    predicted_iou: float
    stability_score: float
    prompt: Prompt | None = None
    prompt_index: int | None = None
    multimask_index: int | None = None
    bbox: tuple[int, int, int, int] = field(default=(0, 0, 0, 0))
    area: int = 0

    def __post_init__(self) -> None:
        ys, xs = np.nonzero(self.mask.any(axis=1)), np.nonzero(self.mask.any(axis=0))
        self.area = int(self.mask.sum())
        if self.area:
            y0, y1, x0, x1 = ys[0][0], ys[0][-1], xs[0][0], xs[0][-1]
            self.bbox = (int(x0), int(y0), int(x1 - x0 + 1), int(y1 - y0 + 1))


class _EmbedOnce:
    """Wraps a SamPredictor so `set_image` of an already-embedded image is free.

    SamAutomaticMaskGenerator calls `set_image(crop)` and then `reset_image()`; the image's
    features are kept here (keyed by shape + content hash) so both are cache operations.
    """

    def __init__(self, predictor):
        self._p = predictor
        self._key: tuple | None = None
        self._state: tuple | None = None
        self.encoder_passes = 0

    def __getattr__(self, name):
        return getattr(self._p, name)

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        key = (image.shape, hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=16).digest())
        if key == self._key and self._state is not None:
            p = self._p
            p.features, p.original_size, p.input_size = self._state
            p.is_image_set = True
            return
        self._p.set_image(image, image_format)
        self.encoder_passes += 1
        self._key, self._state = key, (self._p.features, self._p.original_size, self._p.input_size)

    def reset_image(self) -> None:
        self._p.reset_image()

    def forget(self) -> None:
        """Drop the cached embedding (call between images to free memory)."""
        self._key = self._state = None
        self._p.reset_image()


class MaskPredictor:
    """SAM + config -> `predict(image, prompts)` returning MaskRecords for one image."""

    def __init__(self, sam, cfg: MasksConfig):
        from segment_anything import SamAutomaticMaskGenerator, SamPredictor

        self.cfg = cfg
        self.predictor = _EmbedOnce(SamPredictor(sam))
        self.generator = None
        if cfg.automatic:
            self.generator = SamAutomaticMaskGenerator(sam, output_mode="binary_mask", **cfg.auto.model_dump())
            self.generator.predictor = self.predictor  # share the embedding

    @torch.no_grad()
    def _predict_group(self, prompts: Sequence[Prompt], multimask: bool):
        """Prompts of identical shape -> (B, C, H, W) bool masks, (B, C) iou, (B, C) stability."""
        from segment_anything.utils.amg import calculate_stability_score

        p = self.predictor
        dev = p.device
        size = p.original_size
        coords = labels = boxes = None
        if prompts[0].points:
            pts = torch.as_tensor(np.array([pr.points for pr in prompts], dtype=np.float32), device=dev)
            coords = p.transform.apply_coords_torch(pts, size)
            labels = torch.as_tensor(np.array([pr.labels for pr in prompts], dtype=np.int64), device=dev)
        if prompts[0].box is not None:
            bx = torch.as_tensor(np.array([pr.box for pr in prompts], dtype=np.float32), device=dev)
            boxes = p.transform.apply_boxes_torch(bx, size)
        logits, iou, _ = p.predict_torch(coords, labels, boxes, multimask_output=multimask, return_logits=True)
        thr = p.model.mask_threshold
        stab = calculate_stability_score(logits.flatten(0, 1), thr, self.cfg.auto.stability_score_offset)
        return (logits > thr).cpu().numpy(), iou.float().cpu().numpy(), stab.view(iou.shape).float().cpu().numpy()

    def predict(self, image: np.ndarray, prompts: Sequence[Prompt] = ()) -> list[MaskRecord]:
        """(H, W, 3) uint8 RGB + prompts -> masks. Text prompts are skipped here (see select.py)."""
        # 1. embed the image (the only encoder pass)
        self.predictor.set_image(image)
        records: list[MaskRecord] = []
        # 2. prompted masks, batched per (number of points, has box) so no prompt is padded
        groups: dict[tuple[int, bool], list[int]] = {}
        for i, pr in enumerate(prompts):
            if pr.text is None:
                groups.setdefault((len(pr.points), pr.box is not None), []).append(i)
        for (n_pts, has_box), idx in sorted(groups.items()):
            multimask = self.cfg.multimask and n_pts == 1 and not has_box  # SAM's advice: ambiguous clicks only
            masks, iou, stab = self._predict_group([prompts[i] for i in idx], multimask)
            for b, i in enumerate(idx):
                for c in range(masks.shape[1]):
                    records.append(MaskRecord(
                        masks[b, c], prompts[i].source, float(iou[b, c]), float(stab[b, c]), prompts[i], i,
                        c if multimask else None,
                    ))
        # 3. automatic masks on the same embedding
        if self.generator is not None:
            for m in self.generator.generate(image):
                pt = Prompt(points=tuple(tuple(p) for p in m["point_coords"]), labels=(1,) * len(m["point_coords"]))
                records.append(MaskRecord(m["segmentation"], "auto", float(m["predicted_iou"]),
                                          float(m["stability_score"]), pt))
        self.predictor.forget()
        return records
