"""Which layers move when the whole UNet is fine-tuned on a concept (Custom Diffusion, Fig. 2).

Δl = ||W' - W||_F / ||W||_F per layer (a layer = one module's parameters, weight and bias taken
together), and its mean over three groups: cross-attention (`attn2`), self-attention (`attn1`)
and everything else. The paper's observation, that cross-attention K/V change most, is what
justifies training only them.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch

from lcd.io.atomic import write_text_atomic

GROUPS = ("cross-attention", "self-attention", "other")
COLORS = {"cross-attention": (214, 39, 40), "self-attention": (31, 119, 180), "other": (127, 127, 127)}


@dataclass(frozen=True)
class LayerDelta:
    layer: str  # module path, e.g. 'down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k'
    group: str  # one of GROUPS
    delta: float  # ||W' - W|| / ||W||
    n_params: int


def group_of(param_name: str) -> str:
    if ".attn2." in param_name:
        return "cross-attention"
    if ".attn1." in param_name:
        return "self-attention"
    return "other"


def layer_of(param_name: str) -> str:
    return param_name.rsplit(".", 1)[0]


def layer_deltas(before: Mapping[str, torch.Tensor], after: Mapping[str, torch.Tensor]) -> list[LayerDelta]:
    """Per-layer relative change. `before`/`after`: parameter name -> tensor, same keys.

    Every parameter belongs to exactly one layer and one group. A layer whose weights are all zero
    (norm 0) reports the absolute change."""
    if set(before) != set(after):
        missing = sorted(set(before) ^ set(after))[:3]
        raise ValueError(f"before/after parameter names differ, e.g. {missing}")
    sq_d: dict[str, float] = {}
    sq_w: dict[str, float] = {}
    count: dict[str, int] = {}
    group: dict[str, str] = {}
    for n in before:
        w0, w1 = before[n].detach().double(), after[n].detach().double()
        lay = layer_of(n)
        sq_d[lay] = sq_d.get(lay, 0.0) + float(((w1 - w0) ** 2).sum())
        sq_w[lay] = sq_w.get(lay, 0.0) + float((w0 ** 2).sum())
        count[lay] = count.get(lay, 0) + w0.numel()
        group[lay] = group_of(n)
    return [
        LayerDelta(lay, group[lay], float(np.sqrt(sq_d[lay]) / (np.sqrt(sq_w[lay]) if sq_w[lay] > 0 else 1.0)), count[lay])
        for lay in dict.fromkeys(layer_of(n) for n in before)
    ]


def group_means(rows: Iterable[LayerDelta]) -> dict[str, float]:
    """Mean Δl per group (NaN for a group with no layers)."""
    rows = list(rows)
    return {g: float(np.mean([r.delta for r in rows if r.group == g])) if any(r.group == g for r in rows) else float("nan")
            for g in GROUPS}


def table_csv(rows: Sequence[LayerDelta]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["layer", "group", "delta_l", "n_params"])
    for r in rows:
        w.writerow([r.layer, r.group, f"{r.delta:.6g}", r.n_params])
    return buf.getvalue()


def bar_chart(rows: Sequence[LayerDelta], means: Mapping[str, float], width: int = 900, height: int = 420):
    """PIL image: one bar per layer (in UNet order, coloured by group) and the group means as
    horizontal lines, with a legend. Drawn with PIL alone (no plotting library installed)."""
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(im)
    left, right, top, bottom = 60, width - 10, 50, height - 30
    d.line([(left, top), (left, bottom), (right, bottom)], fill="black")
    top_val = max([r.delta for r in rows] + [v for v in means.values() if np.isfinite(v)] + [1e-12])
    n = max(len(rows), 1)
    bw = (right - left) / n
    for i, r in enumerate(rows):
        h = (bottom - top) * r.delta / top_val
        x0 = left + i * bw
        d.rectangle([x0, bottom - h, x0 + max(bw - 1, 1), bottom], fill=COLORS[r.group])
    for g, v in means.items():
        if np.isfinite(v):
            y = bottom - (bottom - top) * v / top_val
            d.line([(left, y), (right, y)], fill=COLORS[g], width=2)
    d.text((left, 8), "delta_l = ||W'-W|| / ||W|| per layer (bars); group means (lines)", fill="black")
    for k, g in enumerate(GROUPS):
        x = left + k * 250
        d.rectangle([x, 26, x + 12, 38], fill=COLORS[g])
        d.text((x + 18, 26), f"{g}: {means[g]:.3g}", fill="black")
    d.text((4, top - 4), f"{top_val:.2g}", fill="black")
    d.text((4, bottom - 10), "0", fill="black")
    return im


def write_report(rows: Sequence[LayerDelta], out_dir: str | Path) -> dict[str, Path]:
    """delta_l.csv (per layer), delta_l_groups.json (means), delta_l.png (bar chart), atomically."""
    import json

    from lcd.io.atomic import atomic_path

    out = Path(out_dir)
    means = group_means(rows)
    paths = {"table": out / "delta_l.csv", "groups": out / "delta_l_groups.json", "chart": out / "delta_l.png"}
    write_text_atomic(paths["table"], table_csv(rows))
    write_text_atomic(paths["groups"], json.dumps(
        {g: {"mean_delta_l": means[g], "layers": sum(r.group == g for r in rows),
             "params": sum(r.n_params for r in rows if r.group == g)} for g in GROUPS}, indent=2))
    with atomic_path(paths["chart"]) as tmp:
        bar_chart(rows, means).save(tmp, format="PNG")
    return paths


def analyze_layers(lp, spec, cfg, work_dir: str | Path | None = None) -> list[LayerDelta]:
    """Fine-tune every UNet weight (cfg with method 'full') on one concept and measure Δl.

    Mutates `lp.pipe` (it ends fine-tuned), like `train_concepts`."""
    from lcd.train.loop import train_concepts

    cfg = cfg.model_copy(update={"method": "full"})
    before = {n: p.detach().clone() for n, p in lp.pipe.unet.named_parameters()}
    train_concepts(lp, [spec], cfg, work_dir=work_dir)
    after = dict(lp.pipe.unet.named_parameters())
    return layer_deltas(before, after)
