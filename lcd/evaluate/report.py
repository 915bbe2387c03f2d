"""The evaluation report: an HTML page (+ a PNG of it) people can look at, and metrics.json.

The page shows contact sheets (reference | mask | edit), the metric tables and the loss curves.
Images are PNG files beside the page (relative links, so the folder can be copied or served);
a small inline script marks each image loaded / broken on the page (and counts them on <body>),
which is what the headless-Chromium test reads. The PNG is composed with PIL (no browser needed).
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from lcd.errors import LcdError
from lcd.evaluate.metrics import json_safe
from lcd.io.atomic import write_text_atomic
from lcd.io.images import load_image, save_png

THUMB = 128
_CHECK_SCRIPT = """<script>
window.addEventListener('load', function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) {
    var good = imgs[i].complete && imgs[i].naturalWidth > 0;
    imgs[i].setAttribute('data-state', good ? 'loaded' : 'broken');
    if (good) { ok++; } else { imgs[i].style.outline = '3px solid red'; }
  }
  document.body.setAttribute('data-images-total', String(imgs.length));
  document.body.setAttribute('data-images-loaded', String(ok));
});
</script>"""


def fmt(v) -> str:
    """Table cell text: 4 significant decimals, +inf as the infinity sign."""
    if isinstance(v, float):
        if math.isinf(v):
            return "∞" if v > 0 else "-∞"
        return "nan" if math.isnan(v) else f"{v:.4f}"
    return str(v)


def contact_sheet(reference: np.ndarray, mask: np.ndarray, edit: np.ndarray, size: int = THUMB) -> np.ndarray:
    """(H, W, 3) reference, (H, W) or (H, W, 3) mask, (H, W, 3) edit -> (size, 3*size + 8, 3) uint8 strip."""
    if mask.ndim == 2:
        mask = np.repeat((mask.astype(np.uint8) * 255)[..., None], 3, axis=2)
    tiles = [np.asarray(Image.fromarray(x).resize((size, size), Image.LANCZOS)) for x in (reference, mask, edit)]
    gap = np.full((size, 4, 3), 255, np.uint8)
    return np.concatenate([tiles[0], gap, tiles[1], gap, tiles[2]], axis=1)


def loss_plot(values: Sequence[float], width: int = 360, height: int = 160) -> np.ndarray:
    """A loss curve (one value per step) as an (height, width, 3) uint8 line plot with its range."""
    v = np.asarray(values, dtype=np.float64)
    if v.size < 1 or not np.isfinite(v).all():
        raise LcdError(f"a loss curve needs finite values, got {v.size} values", item="loss_curve")
    im = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(im)
    pad = 24
    d.rectangle([pad, 4, width - 4, height - pad], outline=(160, 160, 160))
    lo, hi = float(v.min()), float(v.max())
    span = hi - lo or 1.0
    xs = np.linspace(pad, width - 4, num=max(v.size, 2))
    ys = (height - pad) - (v - lo) / span * (height - pad - 4)
    pts = list(zip(xs.tolist(), ys.tolist())) if v.size > 1 else [(pad, ys[0]), (width - 4, ys[0])]
    d.line(pts, fill=(31, 119, 180), width=2)
    d.text((pad, height - pad + 4), f"steps 0..{v.size - 1}   loss {lo:.4g}..{hi:.4g}", fill=(0, 0, 0))
    return np.asarray(im)


def _table_html(rows: Sequence[Mapping]) -> str:
    if not rows:
        return "<p><em>no rows</em></p>"
    cols = list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(r.get(c, '')))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_report(
    out_dir: str | Path, *, title: str, tables: Mapping[str, Sequence[Mapping]], sheets: Sequence[Mapping] = (),
    loss_curves: Mapping[str, Sequence[float]] | None = None, notes: Sequence[str] = (),
) -> tuple[Path, Path]:
    """Write out_dir/report.html + report.png (+ images/). sheets: dicts with reference, mask, edit
    (image paths) and a caption from method/subject/prompt. Returns (html path, png path)."""
    out = Path(out_dir)
    img_dir = out / "images"
    parts = [f"<h1>{html.escape(title)}</h1>"] + [f"<p class='note'>{html.escape(n)}</p>" for n in notes]
    png_blocks: list[np.ndarray] = []
    # 1. metric tables
    for name, rows in tables.items():
        parts += [f"<h2>{html.escape(name)}</h2>", _table_html(rows)]
        png_blocks.append(_text_block([name] + _table_text(rows)))
    # 2. contact sheets
    if sheets:
        parts.append("<h2>Contact sheets (reference | mask | edit)</h2><div class='sheets'>")
        for i, s in enumerate(sheets):
            strip = contact_sheet(load_image(s["reference"]), load_image(s["mask"]), load_image(s["edit"]))
            rel = f"images/sheet_{i:03d}.png"
            save_png(out / rel, strip)
            cap = " · ".join(str(s[k]) for k in ("method", "subject", "prompt") if k in s)
            parts.append(f"<figure><img src='{rel}' alt='{html.escape(cap)}'><figcaption>{html.escape(cap)}</figcaption></figure>")
            png_blocks += [_text_block([cap]), strip]
        parts.append("</div>")
    # 3. loss curves
    if loss_curves:
        parts.append("<h2>Loss curves</h2>")
        for name, values in loss_curves.items():
            rel = f"images/loss_{len(png_blocks):03d}.png"
            plot = loss_plot(values)
            save_png(out / rel, plot)
            parts.append(f"<figure><img src='{rel}' alt='loss {html.escape(name)}'><figcaption>{html.escape(name)}</figcaption></figure>")
            png_blocks += [_text_block([f"loss: {name}"]), plot]
    style = ("<style>body{font-family:sans-serif;margin:24px}table{border-collapse:collapse;margin:8px 0}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}figure{display:inline-block;margin:6px}"
             ".note{color:#555}</style>")
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>{style}</head><body>" \
           + "\n".join(parts) + _CHECK_SCRIPT + "</body></html>"
    img_dir.mkdir(parents=True, exist_ok=True)
    html_path = write_text_atomic(out / "report.html", page)
    png_path = save_png(out / "report.png", _stack([_text_block([title])] + png_blocks))
    return html_path, png_path


def write_metrics_json(path: str | Path, table: Sequence[Mapping], key: str = "method") -> Path:
    """{<method>: {metric: mean, ...}} for `dvc metrics show`; +inf is written as the string "inf"."""
    doc = {str(r[key]): {k: v for k, v in r.items() if k != key} for r in table}
    return write_text_atomic(path, json.dumps(json_safe(doc), indent=2, sort_keys=True, allow_nan=False) + "\n")


def _table_text(rows: Sequence[Mapping]) -> list[str]:
    if not rows:
        return ["(no rows)"]
    cols = list(dict.fromkeys(k for r in rows for k in r))
    cells = [cols] + [[fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]


def _text_block(lines: Sequence[str]) -> np.ndarray:
    """Lines in PIL's built-in fixed-width bitmap font (table columns stay aligned)."""
    font = ImageFont.load_default_imagefont()
    lines = [ln.replace("∞", "inf").encode("latin-1", "replace").decode("latin-1") for ln in lines]
    width = max(900, 16 + max((int(font.getlength(ln)) for ln in lines), default=0))
    im = Image.new("RGB", (width, 14 * len(lines) + 8), "white")
    d = ImageDraw.Draw(im)
    for i, line in enumerate(lines):
        d.text((8, 4 + 14 * i), line, fill=(0, 0, 0), font=font)
    return np.asarray(im)


def _stack(blocks: Sequence[np.ndarray]) -> np.ndarray:
    width = max(b.shape[1] for b in blocks)
    padded = [np.pad(b, ((0, 6), (0, width - b.shape[1]), (0, 0)), constant_values=255) for b in blocks]
    return np.concatenate(padded, axis=0)
