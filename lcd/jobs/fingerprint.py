"""Change detection for nightly concept training: train a concept only when its inputs changed.

A concept's fingerprint is a sha256 over its photos (bytes, by relative path), its training
config and the base model pin. After a successful training the fingerprint is written beside the
weights (`fingerprint.json`, atomically, last), so a run killed mid-training leaves no record
and the next night trains again; a run that finished is recognised and skipped.

Photos and weights may be folders or prefixes on object storage (`s3://b/photos/dog`,
`s3://b/concepts/dog`): photos are hashed from the objects (memoised by ETag), and the record is
one object beside the weights, so the nightly job runs on any machine of the pool.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from lcd.errors import LcdError
from lcd.io import storage
from lcd.io.atomic import write_text_atomic
from lcd.io.hashing import sha256_file
from lcd.io.images import IMAGE_SUFFIXES, image_files

FINGERPRINT_FILE = "fingerprint.json"


def concept_photos(concept_dir: str | Path) -> list[str | Path]:
    """The photo files of a concept folder or prefix, sorted (hidden files and other suffixes ignored)."""
    if not storage.is_remote(concept_dir):
        return image_files(concept_dir)
    names = storage.list_names(concept_dir)
    return [storage.join(concept_dir, n) for n in sorted(names)
            if not n.startswith(".") and Path(n).suffix.lower() in IMAGE_SUFFIXES]


def concept_fingerprint(concept_dir: str | Path, config: dict[str, Any], base_model: str) -> str:
    """sha256 of (photo names + bytes, config as sorted JSON, base model pin)."""
    photos = concept_photos(concept_dir)
    if not photos:
        raise LcdError(f"{concept_dir}: concept folder has no photos ({', '.join(IMAGE_SUFFIXES)})",
                       item=str(concept_dir))
    h = hashlib.sha256()
    spec = storage.join(concept_dir, "concept.json")  # class word / token (lcd.jobs.training)
    for p in photos + ([spec] if storage.exists(spec) else []):
        h.update(f"{storage.basename(p)}\t{sha256_file(p)}\n".encode())
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    h.update(base_model.encode())
    return h.hexdigest()


def read_fingerprint(weights_dir: str | Path) -> str | None:
    """The fingerprint recorded by the last successful training, or None."""
    p = storage.join(weights_dir, FINGERPRINT_FILE)
    try:
        return json.loads(storage.read_bytes(p))["fingerprint"]
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        return None  # a corrupt record means "unknown": train again


def record_fingerprint(weights_dir: str | Path, fingerprint: str, **extra: Any) -> Path:
    """Write the record after training succeeded (atomically, so it never exists half-written)."""
    return write_text_atomic(storage.join(weights_dir, FINGERPRINT_FILE),
                             json.dumps({"fingerprint": fingerprint, **extra}, sort_keys=True, indent=1))


@dataclass(frozen=True)
class ConceptPlan:
    name: str
    photos_dir: str | Path  # a folder or a URL prefix
    weights_dir: str | Path
    fingerprint: str
    reason: str  # "new" | "changed" | "unchanged"

    @property
    def stale(self) -> bool:
        return self.reason != "unchanged"


def plan_concepts(concepts_root: str | Path, weights_root: str | Path, config: dict[str, Any],
                  base_model: str) -> list[ConceptPlan]:
    """One plan per concept folder (or prefix) under `concepts_root`, sorted by name."""
    plans = []
    for d in concept_folders(concepts_root):
        fp = concept_fingerprint(d, config, base_model)
        name = storage.basename(d)
        wdir = storage.join(weights_root, name)
        old = read_fingerprint(wdir)
        reason = "new" if old is None else "unchanged" if old == fp else "changed"
        plans.append(ConceptPlan(name, d, wdir, fp, reason))
    return plans


def concept_folders(concepts_root: str | Path) -> list[str | Path]:
    """The concept folders under a folder, or the prefixes under a URL (one listing), sorted."""
    if storage.is_remote(concepts_root):
        fs, path = storage.filesystem(str(concepts_root))
        try:
            found = fs.ls(path, detail=True, refresh=True)
        except FileNotFoundError:
            found = []
        names = sorted(storage.basename(e["name"]) for e in found if e.get("type") == "directory")
        if not names:
            raise LcdError(f"{concepts_root}: no concept folders there", item=str(concepts_root))
        return [storage.join(concepts_root, n) for n in names if not n.startswith(".")]
    root = Path(concepts_root)
    if not root.is_dir():
        raise LcdError(f"{root}: concepts folder not found", item=str(root))
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def train_stale(plans: list[ConceptPlan], train: Callable[[ConceptPlan], Any]) -> dict[str, str]:
    """Call `train(plan)` for each stale plan, then record its fingerprint; -> {name: outcome}.

    A failing concept is reported ("failed: ...") and does not stop the others."""
    outcome: dict[str, str] = {}
    for plan in plans:
        if not plan.stale:
            outcome[plan.name] = "skipped"
            continue
        try:
            train(plan)
        except Exception as e:  # one concept's bad photos must not block the others' nightly run
            outcome[plan.name] = f"failed: {type(e).__name__}: {e}"
            continue
        record_fingerprint(plan.weights_dir, plan.fingerprint, reason=plan.reason)
        outcome[plan.name] = "trained"
    return outcome
