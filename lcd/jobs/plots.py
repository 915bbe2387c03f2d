"""Static PNG line charts for the runs' CSV plots (loss curves, seconds per item).

`dvc plots show` renders CSV plots with Vega loaded from a CDN, so offline (a GPU box without
internet, as here) its page is blank; DVC shows image plots as plain <img> tags. Each stage that
writes a CSV plot writes the same data as a PNG beside it, drawn with Pillow (no plotting
library to install), and dvc.yaml lists both.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def _ticks(lo: float, hi: float) -> list[float]:
    if hi <= lo:
        return [lo]
    return [lo + (hi - lo) * k / 4 for k in range(5)]


def line_chart(series: Mapping[str, tuple[Sequence[float], Sequence[float]]], title: str, xlabel: str, ylabel: str,
               width: int = 640, height: int = 360) -> np.ndarray:
    """{name: (xs, ys)} -> (height, width, 3) uint8: one coloured polyline per series, axes with
    five ticks each, a legend. Non-finite points are dropped; no data gives an empty frame that
    says so (a stage with nothing to plot still writes its PNG)."""
    im = Image.new("RGB", (width, height), (255, 255, 255))
    draw, font = ImageDraw.Draw(im), ImageFont.load_default()
    left, right, top, bottom = 64, 12, 24, 36
    draw.text((left, 6), title, fill=(0, 0, 0), font=font)
    clean = {k: [(float(x), float(y)) for x, y in zip(*v) if np.isfinite(x) and np.isfinite(y)] for k, v in series.items()}
    points = [p for v in clean.values() for p in v]
    draw.rectangle([left, top, width - right, height - bottom], outline=(0, 0, 0))
    draw.text((left + 4, height - 14), xlabel, fill=(0, 0, 0), font=font)
    draw.text((4, 6), ylabel, fill=(0, 0, 0), font=font)
    if not points:
        draw.text((left + 10, top + 10), "no data", fill=(120, 120, 120), font=font)
        return np.asarray(im)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)

    def at(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x0) / (x1 - x0) * (width - left - right),
                height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom))

    for t in _ticks(x0, x1):
        px, _ = at(t, y0)
        draw.text((px - 10, height - bottom + 3), f"{t:.4g}", fill=(0, 0, 0), font=font)
    for t in _ticks(y0, y1):
        _, py = at(x0, t)
        draw.text((4, py - 5), f"{t:.4g}", fill=(0, 0, 0), font=font)
    for k, (name, pts) in enumerate(sorted(clean.items())):
        color = COLORS[k % len(COLORS)]
        xy = [at(x, y) for x, y in sorted(pts)]
        if len(xy) > 1:
            draw.line(xy, fill=color, width=2)
        for px, py in xy if len(xy) <= 200 else []:
            draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=color)
        draw.text((width - right - 150, top + 4 + 12 * k), name[:24], fill=color, font=font)
    return np.asarray(im)
