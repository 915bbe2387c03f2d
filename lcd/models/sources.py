"""Model references and their pins: every output records which exact weights produced it.

A reference is a hub id (`owner/name`, optionally with a revision), a local diffusers folder, or
a single checkpoint file. Local sources are pinned by a SHA-256 of their content; hub sources by
the commit the revision resolved to. A diffusers SD folder is pinned by the files loading it
reads (lcd.models.layout): model_index.json, the loaded components' configs and the weights of
the variant read, never another variant or checkpoint lying beside them; for a folder of plain
files that is every file, so the pin equals `sha256_tree` of the folder.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from lcd.io.hashing import sha256_file, sha256_tree
from lcd.models.layout import FolderLayout, sd_layout
from lcd.models.trust import MODEL_INDEX

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


@dataclass(frozen=True)
class ModelSource:
    """Where weights came from. `sha256` for local content, `revision` (a commit) for the hub."""

    ref: str
    kind: str  # "folder" | "single_file" | "hub"
    sha256: str | None = None
    revision: str | None = None
    variant: str | None = None  # the weights variant read ("fp16"), None for the plain files
    weights: tuple[str, ...] = ()  # a folder's weight files read (or shard indexes), relative

    @property
    def short_hash(self) -> str:
        """A1111-style short hash: 10 hex chars of the content hash (or of the hub commit)."""
        return (self.sha256 or self.revision or "")[:10]

    def to_dict(self) -> dict:
        return asdict(self)


def local_source(ref: str | Path, variant: str | None = None) -> ModelSource:
    """Pin a local folder or file by content; a diffusers SD folder by the files read with
    models.variant `variant` (a hub cache repository folder: its snapshot of refs/main)."""
    from lcd.models.layout import hub_cache_snapshot

    p = Path(ref)
    if p.is_dir() and (snap := hub_cache_snapshot(p, None)) is not None:
        p = snap[0]
    if p.is_dir() and (p / MODEL_INDEX).exists():
        return layout_source(str(ref), sd_layout(p, variant))
    return content_source(p, str(ref))


def content_source(p: Path, ref: str | None = None) -> ModelSource:
    """Pin a folder by all its files (a CLIP folder, a config-only folder), a file by its bytes."""
    if p.is_dir():
        return ModelSource(ref=ref or str(p), kind="folder", sha256=sha256_tree(p))
    return ModelSource(ref=ref or str(p), kind="single_file", sha256=sha256_file(p))


def sha256_files(root: Path, files: tuple[str, ...]) -> str:
    """`sha256_tree`'s hash over only `files` (relative paths): the same lines in the same
    order (a folder's own files before its subfolders'), so a folder of exactly those files
    hashes as sha256_tree does."""
    def walk_order(rel: str) -> tuple:
        *dirs, name = rel.split("/")
        return tuple((1, d) for d in dirs) + ((0, name),)

    h = hashlib.sha256()
    for rel in sorted(files, key=walk_order):
        h.update(f"{rel}\t{sha256_file(root / rel)}\n".encode())
    return h.hexdigest()


def layout_source(ref: str, layout: FolderLayout, kind: str = "folder", revision: str | None = None) -> ModelSource:
    """The pin of a diffusers folder as `layout` reads it. kind "hub": pinned by the commit
    `revision` (no content hash), naming the variant and weight files all the same."""
    sha = None if kind == "hub" else sha256_files(layout.folder, layout.read_files)
    return ModelSource(ref=ref, kind=kind, sha256=sha, revision=revision, variant=layout.variant,
                       weights=layout.weight_files)


def is_hub_id(ref: str) -> bool:
    """True for `owner/name` that is not an existing local path."""
    return bool(HUB_ID.match(ref)) and not Path(ref).exists()
