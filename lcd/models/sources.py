"""Model references and their pins: every output records which exact weights produced it.

A reference is a hub id (`owner/name`, optionally with a revision), a local diffusers folder, or
a single checkpoint file. Local sources are pinned by a SHA-256 of their content; hub sources by
the commit the revision resolved to.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

from lcd.io.hashing import sha256_file, sha256_tree

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


@dataclass(frozen=True)
class ModelSource:
    """Where weights came from. `sha256` for local content, `revision` (a commit) for the hub."""

    ref: str
    kind: str  # "folder" | "single_file" | "hub"
    sha256: str | None = None
    revision: str | None = None

    @property
    def short_hash(self) -> str:
        """A1111-style short hash: 10 hex chars of the content hash (or of the hub commit)."""
        return (self.sha256 or self.revision or "")[:10]

    def to_dict(self) -> dict:
        return asdict(self)


def local_source(ref: str | Path) -> ModelSource:
    """Pin a local folder or file by content."""
    p = Path(ref)
    if p.is_dir():
        return ModelSource(ref=str(ref), kind="folder", sha256=sha256_tree(p))
    return ModelSource(ref=str(ref), kind="single_file", sha256=sha256_file(p))


def is_hub_id(ref: str) -> bool:
    """True for `owner/name` that is not an existing local path."""
    return bool(HUB_ID.match(ref)) and not Path(ref).exists()
