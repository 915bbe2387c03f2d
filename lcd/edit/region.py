"""Pure geometry of the edit: crop boxes around a region, and compositing back through alpha.

All functions are pure numpy (no I/O, no torch). Masks are (H, W) bool, alphas (H, W) float32
in [0, 1], images (H, W, 3) uint8. The compositing alpha is `lcd.masks.morphology.feather_alpha`.

Which dilation applies to which region (the one place this is said):
- `edit.dilate_px` and `edit.feather_px` apply to every region, whatever its source (a mask
  file, a `box:` rule, a `sam:` rule, `lcd edit --mask` or `--masks`): the region is grown by
  `dilate_px`, then ramped to 0 over `feather_px`, to give the compositing weight. Pixels where
  it is 0 are the input's bytes.
- `masks.dilate_px` (and `masks.fill_holes`) apply only when a stored SAM mask becomes a region
  (`sam:` rules in edit-batch, `lcd edit --masks`, `lcd masks export`): SAM's masks hug the object,
  so they may be grown once more before the edit's own dilation. Its default is 0, so by default a
  SAM region is dilated once, like any other. The region an edit used, after this step and before
  the edit's dilation, is what edit-batch saves as `regions/<id>.png`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CropBox:
    """A square window (may extend past the image; the outside is edge-padded)."""

    x0: int
    y0: int
    side: int

    @property
    def x1(self) -> int:
        return self.x0 + self.side

    @property
    def y1(self) -> int:
        return self.y0 + self.side


def crop_box(alpha: np.ndarray, working_size: int, margin: float) -> CropBox:
    """Square window around the non-zero alpha, grown by `margin` of its side on each edge.

    The side is at least min(working_size, longest image side), so small masks are edited with
    context rather than upscaled from a few pixels, and a whole image at working size is one crop.
    """
    h, w = alpha.shape
    ys, xs = np.flatnonzero(alpha.any(axis=1)), np.flatnonzero(alpha.any(axis=0))
    if len(xs) == 0:
        return CropBox(0, 0, max(h, w))
    bx0, bx1, by0, by1 = xs[0], xs[-1] + 1, ys[0], ys[-1] + 1
    side = int(np.ceil(max(bx1 - bx0, by1 - by0) * (1.0 + 2.0 * margin)))
    side = min(max(side, working_size), max(h, w))  # context beyond the image is useless
    cx, cy = (bx0 + bx1) / 2.0, (by0 + by1) / 2.0
    x0 = int(round(cx - side / 2.0))
    y0 = int(round(cy - side / 2.0))
    # keep inside the image where the side allows, so padding is used only when unavoidable
    x0 = min(max(x0, 0), max(w - side, 0)) if side <= w else int(round((w - side) / 2.0))
    y0 = min(max(y0, 0), max(h - side, 0)) if side <= h else int(round((h - side) / 2.0))
    return CropBox(x0, y0, side)


def extract(a: np.ndarray, box: CropBox) -> np.ndarray:
    """Cut `box` out of an (H, W, ...) array, edge-padding where the box leaves the image."""
    h, w = a.shape[:2]
    pad = ((max(0, -box.y0), max(0, box.y1 - h)), (max(0, -box.x0), max(0, box.x1 - w)))
    pad += tuple((0, 0) for _ in range(a.ndim - 2))
    sub = a[max(box.y0, 0) : min(box.y1, h), max(box.x0, 0) : min(box.x1, w)]
    return np.pad(sub, pad, mode="edge") if any(p != (0, 0) for p in pad) else sub.copy()


def paste(image: np.ndarray, patch: np.ndarray, alpha: np.ndarray, box: CropBox) -> np.ndarray:
    """Composite `patch` (box.side^2 x 3 uint8) into a copy of `image` through full-size `alpha`.

    Where alpha == 0 the input bytes are kept exactly (no float round trip); the float blend
    covers only the rows and columns of the box where alpha is non-zero (the crop's context
    margin is copied, not blended).
    """
    h, w = image.shape[:2]
    out = image.copy()
    ys, ye = max(box.y0, 0), min(box.y1, h)
    xs, xe = max(box.x0, 0), min(box.x1, w)
    a_box = alpha[ys:ye, xs:xe]
    rows, cols = np.flatnonzero(a_box.any(axis=1)), np.flatnonzero(a_box.any(axis=0))
    if len(rows) == 0:
        return out
    ys, ye, xs, xe = ys + rows[0], ys + rows[-1] + 1, xs + cols[0], xs + cols[-1] + 1
    p = patch[ys - box.y0 : ye - box.y0, xs - box.x0 : xe - box.x0].astype(np.float32)
    a = alpha[ys:ye, xs:xe, None]
    base = out[ys:ye, xs:xe].astype(np.float32)
    mixed = np.clip(np.round(a * p + (1.0 - a) * base), 0, 255).astype(np.uint8)
    out[ys:ye, xs:xe] = np.where(a > 0, mixed, out[ys:ye, xs:xe])
    return out
