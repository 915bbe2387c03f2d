"""Concept folders of a data root, as the stage flows iterate them."""

from __future__ import annotations

from pathlib import Path


def concept_dirs(concepts_root: str) -> list[Path]:
    """The concept folders under `concepts_root` (hidden ones skipped), sorted."""
    return sorted(p for p in Path(concepts_root).iterdir() if p.is_dir() and not p.name.startswith("."))
