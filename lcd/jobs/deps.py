"""What a shard's item hashes were made from, as object metadata: the coordinator's check of
current shards without the inputs.

A shard records, beside its ledger, `tables/deps-<shard>.parquet` (tables.DEPS_SCHEMA): one row
per thing its items' input hashes depend on, with a stamp that changes with its content:
  file      an image or mask: "size:ETag" of an object, "size:mtime_ns:ctime_ns" of a local file
  tree      a concept folder, the masks store, a model folder (a prefix or a local folder): a
            sha256 over its listing's (relative name, size, stamp) lines
  pin       a hub id: the text itself (its revision is part of the settings)
  (http(s) refs are stamped URL_STAMP, the URL is the identity: a web server has no listing,
  and a HEAD per URL would cost the check a deadline per dead host; the shard hashes the bytes
  it reads, so an item whose bytes changed under the same URL is caught when its shard runs)
  settings  settings_digest: the run's edit, models and masks settings, engine, concepts root and
            masks store as given
The coordinator (lcd.jobs.editing.current_report) stamps the same refs again, from listings and
HEAD requests, and compares. It never reads an input's bytes, a store part, a concept or a weight
file, and never resolves a path of another machine: a local ref that is not there reads
"absent", which differs from what the shard recorded, so that shard runs and decides for itself.
Why: a pool of GPU machines shares the output root and the bucket, not the workers' disks, and
the coordinator may run where no input, masks store or model was ever fetched.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Iterable

from lcd.config import EditConfig, ModelsConfig
from lcd.edit.config import EXECUTION_ONLY
from lcd.io import http, storage
from lcd.jobs.manifest import ManifestItem
from lcd.jobs.regions import needs_text_clip, uses_sam
from lcd.masks.config import MasksConfig
from lcd.models.schedulers import scheduler_class_name

ABSENT = "absent"
SETTINGS = "settings"
Dep = tuple[str, str]  # (ref, kind)


def settings_digest(cfg: EditConfig, models: ModelsConfig, engine: str, masks_cfg: MasksConfig | None) -> str:
    """sha256 of every setting that changes an output, as the run was given them (no file is read:
    the content behind each model, concept and store reference is a dep of its own, and where
    they are is in the deps' refs)."""
    m = masks_cfg or MasksConfig()
    payload = {"edit": cfg.model_dump(exclude=set(EXECUTION_ONLY)), "scheduler_class": scheduler_class_name(cfg.scheduler),
               "engine": engine, "masks": [m.fill_holes, m.dilate_px, m.text_crop_margin]}
    if engine != "noop":
        payload["models"] = models.model_dump(include={"sd", "sd_revision", "sd_single_file_config", "variant", "clip",
                                                       "dtype", "vae_dtype"})
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def concept_ref(concept: str | None, concepts_root) -> str | None:
    """A manifest's concept -> the folder or URL it names (a name under `concepts_root`, else as given)."""
    if concept is None:
        return None
    if storage.is_remote(concept) or "/" in concept or concepts_root is None:
        return str(storage.normalize(concept))
    return str(storage.join(concepts_root, concept))


def model_dep(ref: str) -> Dep:
    """A model reference -> (ref, kind): an object or a prefix at a URL, a local file or folder,
    else a hub id (pin)."""
    if storage.is_remote(ref):
        return ref, "file" if storage.is_file(ref) else "tree"
    p = Path(ref)
    if p.exists():
        return str(p.resolve()), "tree" if p.is_dir() else "file"
    return ref, "pin"


def shard_deps(items: list[ManifestItem], *, cfg: EditConfig, models: ModelsConfig, engine: str,
               concepts_root, masks_store, masks_cfg: MasksConfig | None) -> list[Dep]:
    """The refs this shard's item hashes depend on, sorted, each once (settings first)."""
    deps: set[Dep] = set()
    for it in items:
        deps.update((str(storage.normalize(r)) if storage.is_remote(r) else os.path.abspath(r), "file")
                    for r in (it.image, it.mask) if r)
        if (c := concept_ref(it.concept, concepts_root)) is not None:
            deps.add((c if storage.is_remote(c) else os.path.abspath(c), "tree"))
    if masks_store is not None and isinstance(masks_store, (str, Path)) and any(map(uses_sam, items)):
        deps.add((str(storage.normalize(masks_store)) if storage.is_remote(masks_store)
                  else os.path.abspath(masks_store), "tree"))
    if engine != "noop":
        deps.update(model_dep(r) for r in (models.sd, models.sd_single_file_config) if r)
    if any(map(needs_text_clip, items)):
        deps.add(model_dep(models.clip))
    return sorted(deps)


URL_STAMP = "url"  # an http(s) ref: identified by its URL (no listing, no HEAD per URL)


def stamp_deps(deps: Iterable[Dep]) -> dict[Dep, str]:
    """{dep: stamp} (ABSENT for what is not there). Files are looked up per folder at once
    (storage.entries: an lstat each locally, prefix listings on object storage); trees are listed."""
    out: dict[Dep, str] = {}
    by_folder: dict[str, list[str]] = defaultdict(list)
    for ref, kind in deps:
        if http.is_http(ref):
            out[(ref, kind)] = URL_STAMP
        elif kind == "file":
            folder, _, name = ref.rstrip("/").rpartition("/")
            by_folder[folder].append(name)
        elif kind == "tree":
            out[(ref, kind)] = tree_stamp(ref)
        else:
            out[(ref, kind)] = ref
    for folder, names in by_folder.items():
        try:
            found = storage.entries(folder, names)
        except (OSError, NotADirectoryError):
            found = {}
        for n in names:
            e = found.get(n)
            out[(f"{folder}/{n}", "file")] = f"{e.size}:{e.stamp}" if e is not None and e.regular else ABSENT
    return out


def tree_stamp(ref: str) -> str:
    """sha256 over sorted (relative name, size, stamp) of every file under a folder or prefix
    (names starting with '.' skipped, as sha256_tree skips them); ABSENT when there is none."""
    lines = []
    if storage.is_remote(ref):
        fs, path = storage.filesystem(ref)
        fs.invalidate_cache(path)
        try:
            found = fs.find(path, detail=True)
        except FileNotFoundError:
            found = {}
        for key, meta in found.items():
            rel = key[len(path):].lstrip("/")
            if meta.get("type") == "file" and not any(part.startswith(".") for part in rel.split("/")):
                stamp = meta.get("ETag") or meta.get("mtime") or meta.get("LastModified")
                lines.append(f"{rel}\t{int(meta.get('size') or 0)}\t{stamp}")
    else:
        root = Path(ref)
        if root.is_file():
            st = root.stat()
            lines.append(f"\t{st.st_size}\t{st.st_mtime_ns}")
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                if not name.startswith("."):
                    p = Path(dirpath) / name
                    st = p.stat()
                    lines.append(f"{p.relative_to(root).as_posix()}\t{st.st_size}\t{st.st_mtime_ns}")
    if not lines:
        return ABSENT
    return hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()


def dep_rows(settings: str, deps: list[Dep]) -> list[dict]:
    """Rows of the deps table (tables.DEPS_SCHEMA): the settings, then each dep with its stamp now."""
    stamps = stamp_deps(deps)
    return [{"ref": SETTINGS, "kind": SETTINGS, "stamp": settings}] + [
        {"ref": ref, "kind": kind, "stamp": stamps[(ref, kind)]} for ref, kind in deps]


def first_change(rows: list[dict], settings: str, deps: list[Dep]) -> str | None:
    """What changed since a shard recorded `rows` ("settings" or a ref), or None when nothing
    did: the same settings, and every dep the items need now (`deps`, shard_deps: another
    concepts root or masks store names other refs) recorded, with the same stamp now.
    No rows (a shard from before deps were kept, or killed before its tables): "no deps table"."""
    if not rows:
        return "no deps table"
    recorded = {(r["ref"], r["kind"]): r["stamp"] for r in rows}
    if recorded.pop((SETTINGS, SETTINGS), None) != settings:
        return SETTINGS
    missing = [d for d in deps if d not in recorded]
    if missing:
        return missing[0][0]
    now = stamp_deps(deps)
    for dep in deps:
        if now[dep] != recorded[dep]:
            return dep[0]
    return None
