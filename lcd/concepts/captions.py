"""The bundled caption list for merging concepts when no regularization set is given.

Merge keeps the merged K/V outputs close to the base model's on these captions (C_reg in
lcd.concepts.merge). Custom Diffusion uses ~1000 captions of its regularization images; without
them, a spread of everyday subjects and settings (200 captions, 40 subjects x 5 settings) covers
the words that prompts use. A regularization set's own captions are better: `--reg-dir`.
"""

from __future__ import annotations

from pathlib import Path

from lcd.errors import LcdError

SUBJECTS = (
    "a dog", "a cat", "a horse", "a bird", "a teddy bear", "a cup of coffee", "a red car", "a bicycle",
    "a wooden chair", "a sofa", "a backpack", "a teapot", "a vase of flowers", "a pair of sneakers", "a clock",
    "a man", "a woman", "a child", "an old house", "a bridge", "a mountain", "a lake", "a city street",
    "a bowl of fruit", "a birthday cake", "a guitar", "a laptop", "a book", "a pair of sunglasses", "a robot toy",
    "a castle", "a boat", "a tree", "a field of sunflowers", "a plate of pasta", "a lamp", "a candle",
    "a painting", "a sculpture", "a train",
)
SETTINGS = ("", " on a table", " in a garden", " at night", " in the snow")
CAPTIONS = tuple(f"a photo of {s}{w}" if i % 2 == 0 else f"{s}{w}, high quality photograph"
                 for i, (s, w) in enumerate((s, w) for s in SUBJECTS for w in SETTINGS))


def read_captions(path: str | Path) -> list[str]:
    """Captions from a text file, one per non-empty line."""
    p = Path(path)
    if not p.is_file():
        raise LcdError(f"{p}: caption file not found", item=str(p))
    from lcd.io.documents import read_text_file

    caps = [ln.strip() for ln in read_text_file(p, "caption file", 1 << 30).splitlines() if ln.strip()]
    if not caps:
        raise LcdError(f"{p}: caption file has no captions", item=str(p))
    return caps
