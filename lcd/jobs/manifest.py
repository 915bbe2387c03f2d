"""Edit manifests: one JSON object per item -> validated `ManifestItem`s, split into shards.

A manifest is JSON Lines (`.jsonl`, one object a line) or a JSON list (`.json`). Each item has
an image, a region (a `mask` file or a `select` rule), an optional `concept`, a `prompt` and a
`seed`. Relative paths are resolved against the manifest's own folder, so a manifest travels
with its data (DVC-tracked `data/`). A malformed line does not sink the batch: it comes back as
a failure row naming the line, and the other items run.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field, ValidationError, model_validator

from lcd.config_base import StrictConfig
from lcd.errors import LcdError

ITEM_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # matched whole (fullmatch): no trailing newline


class ManifestItem(StrictConfig):
    """One edit request. `id` names the output file (`<out>/edits/<id>.png`) and every table row."""

    id: str
    image: str
    mask: str | None = None
    select: str | None = None  # "box:x0,y0,x1,y1" (pixels, end-exclusive), or a rule lcd.masks resolves
    concept: str | None = None  # a concept name under the concepts root, or a folder path
    prompt: str = Field(min_length=1)
    seed: int = 0

    @model_validator(mode="after")
    def _one_region(self) -> "ManifestItem":
        if (self.mask is None) == (self.select is None):
            raise ValueError("give exactly one of 'mask' (a mask file) or 'select' (a selection rule)")
        if not ITEM_ID.fullmatch(self.id):
            raise ValueError(f"id must match {ITEM_ID.pattern} whole (it names the output file), got {self.id!r}")
        return self


@dataclass(frozen=True)
class ManifestFailure:
    """A manifest entry that could not become an item (bad JSON, missing key, duplicate id)."""

    id: str
    message: str


def _default_id(raw: dict, index: int) -> str:
    stem = Path(str(raw.get("image", "item"))).stem
    return re.sub(r"[^A-Za-z0-9._-]", "_", f"{index:06d}-{stem}")[:128]


def parse_manifest(text: str, fmt: str = "jsonl") -> tuple[list[ManifestItem], list[ManifestFailure]]:
    """Parse manifest text -> (items in order, failures). Ids default to `<line index>-<image stem>`."""
    if fmt not in ("jsonl", "json"):
        raise LcdError(f"manifest format must be 'jsonl' or 'json', got {fmt!r}", item="manifest")
    if fmt == "json":
        try:
            entries = json.loads(text)
        except json.JSONDecodeError as e:
            raise LcdError(f"manifest is not valid JSON: {e}", item="manifest") from None
        if not isinstance(entries, list):
            raise LcdError(f"a .json manifest must be a list of objects, got {type(entries).__name__}", item="manifest")
        raws = [(i, e, None) for i, e in enumerate(entries)]
    else:
        raws = []
        for i, line in enumerate(l for l in text.splitlines() if l.strip()):
            try:
                raws.append((i, json.loads(line), None))
            except json.JSONDecodeError as e:
                raws.append((i, None, f"line {i + 1}: not valid JSON ({e.msg})"))
    items: list[ManifestItem] = []
    failures: list[ManifestFailure] = []
    seen: set[str] = set()
    for i, raw, err in raws:
        if err is None and not isinstance(raw, dict):
            err = f"entry {i}: must be a JSON object, got {type(raw).__name__}"
        fallback = f"{i:06d}-invalid"
        if err is not None:
            failures.append(ManifestFailure(fallback, err))
            continue
        raw = {"id": _default_id(raw, i), **raw}
        try:
            item = ManifestItem.model_validate(raw)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(x) for x in first["loc"]) or "item"
            failures.append(ManifestFailure(str(raw.get("id", fallback)), f"entry {i}: {where}: {first['msg']}"))
            continue
        if item.id in seen:
            failures.append(ManifestFailure(item.id, f"entry {i}: duplicate id {item.id!r} (ids name output files)"))
            continue
        seen.add(item.id)
        items.append(item)
    return items, failures


def read_manifest(path: str | Path) -> tuple[list[ManifestItem], list[ManifestFailure]]:
    """Read a `.jsonl` / `.json` manifest file; relative paths in it are made absolute."""
    p = Path(path)
    if not p.is_file():
        raise LcdError(f"{p}: manifest not found", item=str(p))
    items, failures = parse_manifest(p.read_text(), "json" if p.suffix == ".json" else "jsonl")
    return [resolve_paths(it, p.resolve().parent) for it in items], failures


def resolve_paths(item: ManifestItem, base: Path) -> ManifestItem:
    """Image / mask paths relative to `base` -> absolute. Concept names are left as given."""
    def fix(s: str | None) -> str | None:
        return None if s is None else str(base / s) if not Path(s).is_absolute() else s

    return item.model_copy(update={"image": fix(item.image), "mask": fix(item.mask)})


def shard_items(items: list[ManifestItem], num_shards: int, index: int) -> list[ManifestItem]:
    """Contiguous shard `index` of `num_shards` (sizes differ by at most one). Deterministic in the
    manifest order, so a re-run assigns every item to the same shard and finds its output."""
    if num_shards < 1:
        raise LcdError(f"num_shards must be >= 1, got {num_shards}", item="num_shards")
    if not 0 <= index < num_shards:
        raise LcdError(f"shard index must be in [0, {num_shards}), got {index}", item="shard_index")
    n = len(items)
    start, stop = index * n // num_shards, (index + 1) * n // num_shards
    return items[start:stop]
