"""How the reference masks beside this file were drawn (once; kept to show it, not run by tests).

No SAM is involved: a hand-tuned colour rule per photo (the subjects stand out by hue, saturation
or distance from a flat backdrop) gives a first mask inside a region 24 px wider than the test's
prompt box; its largest component, closed and hole-filled, seeds OpenCV's GrabCut (eroded: sure
foreground, outside the region: sure background), whose largest component, hole-filled, is the
reference. The overlays were then reviewed by eye (magenta outline, green prompt box).

Usage: python tests/lcd/masks/litemedsam/draw_reference_masks.py OUT_DIR   (masks + overlay PNGs)
"""

import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from scipy import ndimage as ndi

HERE = Path(__file__).parent
MARGIN = 24  # the drawing region reaches past the prompt box, so a box cut too tight cannot clip a reference
BOXES = {"duck_toy_00": (136, 110, 400, 380), "dog2_00": (158, 138, 368, 494), "dog6_00": (18, 106, 320, 478)}


def colour_rule(name: str, rgb: np.ndarray) -> np.ndarray:
    h, s, v = (c.astype(int) for c in np.moveaxis(cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV), -1, 0))
    if name == "duck_toy_00":  # yellow body, orange beak on dark grey gravel
        return (h >= 5) & (h <= 35) & (s > 120) & (v > 90)
    if name == "dog2_00":  # orange-brown fur against a desaturated grey forest
        return (h <= 25) & (s > 70) & (v > 40)
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).astype(float)  # dog6: far from the flat orange backdrop
    return np.linalg.norm(lab - np.median(lab[:40, :40].reshape(-1, 3), axis=0), axis=-1) > 28


def largest(m: np.ndarray) -> np.ndarray:
    lab, n = ndi.label(m)
    return lab == 1 + int(np.argmax(ndi.sum(m, lab, range(1, n + 1))))


def draw(name: str) -> tuple[np.ndarray, np.ndarray]:
    rgb = np.asarray(Image.open(HERE / f"{name}.jpg").convert("RGB"))
    x0, y0, x1, y1 = BOXES[name]
    region = np.zeros(rgb.shape[:2], bool)
    region[max(0, y0 - MARGIN):y1 + MARGIN, max(0, x0 - MARGIN):x1 + MARGIN] = True
    seed = ndi.binary_opening(colour_rule(name, rgb) & region, iterations=2)
    seed = ndi.binary_fill_holes(ndi.binary_closing(largest(seed), iterations=3))
    gc = np.full(rgb.shape[:2], cv2.GC_PR_BGD, np.uint8)
    gc[seed] = cv2.GC_PR_FGD
    gc[ndi.binary_erosion(seed, iterations=6)] = cv2.GC_FGD
    gc[~region] = cv2.GC_BGD
    cv2.grabCut(rgb[..., ::-1].copy(), gc, None, np.zeros((1, 65)), np.zeros((1, 65)), 5, cv2.GC_INIT_WITH_MASK)
    return rgb, ndi.binary_fill_holes(largest((gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)))


if __name__ == "__main__":
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for name, (x0, y0, x1, y1) in BOXES.items():
        rgb, mask = draw(name)
        Image.fromarray(mask).save(out / f"{name}_mask.png", optimize=True)
        ov = rgb.astype(float)
        ov[mask] = ov[mask] * 0.5 + np.array([255, 90, 0]) * 0.5
        ov[mask ^ ndi.binary_erosion(mask, iterations=2)] = [255, 0, 255]
        ov[y0:y1, [x0, x1 - 1]] = [0, 255, 0]
        ov[[y0, y1 - 1], x0:x1] = [0, 255, 0]
        Image.fromarray(ov.astype(np.uint8)).save(out / f"{name}_overlay.png")
