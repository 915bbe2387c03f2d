"""What a concept folder holds, read from its card and safetensors header (no tensor is loaded):
tokens, class words, method, layout, base model pin, file size, rank. Backs `lcd concept list|show`."""

from __future__ import annotations

import json
from pathlib import Path

from lcd.concepts.io import CARD_NAME, WEIGHTS_NAME, read_card, read_concept_header
from lcd.concepts.validate import check_card
from lcd.errors import ModelLoadError

COLUMNS = ("name", "tokens", "class_words", "method", "layout", "rank", "base", "bytes")


def find_concepts(root: str | Path) -> list[Path]:
    """`root` itself when it is a concept folder, else its sub-folders that are (sorted)."""
    p = Path(root)
    if not p.is_dir():
        raise ModelLoadError(f"{p}: no such folder", item=str(p))
    if (p / WEIGHTS_NAME).exists():
        return [p]
    return sorted(d for d in p.iterdir() if (d / WEIGHTS_NAME).exists())


def concept_summary(folder: str | Path) -> dict:
    """{name, folder, tokens, class_words, method, layout, rank ('full' | r | 'lo-hi'), ranks
    {module: r} for low-rank layouts, layers, base {ref, sha256, revision}, bytes (weights file),
    compression / merged_from from the card when present}. A concept whose header edit-batch would
    refuse (lcd.concepts.validate) raises ModelLoadError naming its file."""
    p = Path(folder)
    f, meta, specs = read_concept_header(p)
    shapes = {k: list(s.shape) for k, s in specs.items()}
    card = read_card(p)
    check_card(card, str(p / CARD_NAME))
    method = meta.get("method", "?")
    layout = meta.get("layout") or ("lowrank" if method == "lora" else "full")
    ranks = {k[len("unet."):-len(".lora_A")]: s[0] for k, s in shapes.items() if k.endswith(".lora_A")}
    layers = len(ranks) if layout == "lowrank" else sum(k.startswith("unet.") for k in shapes)
    rank: str | int = "full"
    if ranks:
        lo, hi = min(ranks.values()), max(ranks.values())
        rank = lo if lo == hi else f"{lo}-{hi}"
    base = card.get("base") or {}
    out = {"name": p.name, "folder": str(p), "tokens": json.loads(meta.get("tokens", "[]")),
           "class_words": card.get("class_words", []), "method": method, "layout": layout, "rank": rank,
           "layers": layers, "base": {k: base.get(k) for k in ("ref", "sha256", "revision")},
           "bytes": f.stat().st_size}
    if ranks:
        out["ranks"] = ranks
    for k in ("compression", "merged_from", "steps"):
        if k in card:
            out[k] = card[k]
    return out


def _cell(row: dict, col: str) -> str:
    v = row[col]
    if col == "base":
        pin = v.get("sha256") or v.get("revision") or "?"
        return f"{v.get('ref') or '?'}@{str(pin)[:12]}"
    return ",".join(map(str, v)) if isinstance(v, list) else str(v)


def format_table(rows: list[dict]) -> str:
    """Rows of `concept_summary` as a fixed-width text table with a header line."""
    cells = [list(COLUMNS)] + [[_cell(r, c) for c in COLUMNS] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)
