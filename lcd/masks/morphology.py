"""Mask morphology: grow, feather, fill holes. Pure numpy/cv2.

Masks are (H, W) bool, alphas (H, W) float32 in [0, 1]. One implementation serves SAM regions
(lcd.masks.postprocess) and the edit's compositing weight (lcd.edit), so a mask exported here
and a mask fed to the edit grow the same way.
"""

from __future__ import annotations

import cv2
import numpy as np


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Grow a bool mask by `radius` pixels (Euclidean disc). radius 0 returns a copy."""
    if radius <= 0:
        return mask.copy()
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.dilate(mask.astype(np.uint8), k).astype(bool)


def feather_alpha(mask: np.ndarray, dilate_px: int, feather_px: int) -> np.ndarray:
    """Blend weight of the generated image: 1 on the dilated mask, a linear ramp over
    `feather_px` pixels outside it, and exactly 0 beyond (so those pixels are byte-identical).

    Computed in the mask's bounding box grown by dilate_px + feather_px + 2 (beyond that distance
    alpha is 0, and every mask pixel is inside the window; OpenCV's precise distance transform
    agrees with the whole-image one to 1e-7), so a small region of a 12 MP photo costs what the
    region costs.
    """
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    out = np.zeros(mask.shape, np.float32)
    if len(rows) == 0:
        return out
    r = max(dilate_px, 0) + max(feather_px, 0) + 2
    y0, y1 = max(rows[0] - r, 0), min(rows[-1] + 1 + r, mask.shape[0])
    x0, x1 = max(cols[0] - r, 0), min(cols[-1] + 1 + r, mask.shape[1])
    out[y0:y1, x0:x1] = _feather_whole(mask[y0:y1, x0:x1], dilate_px, feather_px)
    return out


def _feather_whole(mask: np.ndarray, dilate_px: int, feather_px: int) -> np.ndarray:
    core = dilate(mask, dilate_px)
    if feather_px <= 0 or not core.any():
        return core.astype(np.float32)
    dist = cv2.distanceTransform((~core).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return np.clip(1.0 - dist / float(feather_px + 1), 0.0, 1.0).astype(np.float32)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill background regions not connected to the image border (SAM leaves pinholes)."""
    m = np.asarray(mask, dtype=bool)
    bg = (~m).astype(np.uint8)
    n, labels = cv2.connectedComponents(bg, connectivity=4)
    if n <= 1:
        return m.copy()
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    outside = np.isin(labels, border[border > 0])
    return m | (bg.astype(bool) & ~outside)
