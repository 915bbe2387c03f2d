"""What decides whether an edit is redone: the item's `input_hash` and the run's config fingerprint.

An item's output `<out>/edits/<id>.png` carries, in its PNG metadata, the sha256 of everything
that determines it: input bytes, region (for a `sam:` rule the stored masks it reads, and CLIP's
weights for `sam:text:`), concept weights, prompt, seed, edit config (with the sampler class
actually built) and model pin. An item whose output exists with the same hash is skipped; any
change to any of those redoes it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from lcd.config import EditConfig, ModelsConfig
from lcd.edit.config import EXECUTION_ONLY
from lcd.errors import InputImageError, LcdError
from lcd.io import storage
from lcd.io.config import IoConfig
from lcd.io.hashing import sha256_file, sha256_tree
from lcd.jobs.manifest import ManifestItem
from lcd.jobs.regions import region_fingerprint
from lcd.masks.config import MasksConfig
from lcd.models.schedulers import scheduler_class_name
from lcd.models.sources import local_source

if TYPE_CHECKING:
    from lcd.masks.store import MaskStore

Engine = Literal["diffusion", "noop"]


def model_pin(ref: str, revision: str | None, variant: str | None = None) -> str:
    """Content hash of the local weights read (for a diffusers folder, those of `variant`), or
    `ref@revision` (`#variant`) for a hub id (resolved at load time). Weights at a URL: a pin
    off their listing (names, ETags, sizes: lcd.models.remote.url_pin), so nothing is fetched."""
    from lcd.models import remote

    if remote.is_url(ref):
        return remote.url_pin(ref)
    p = Path(ref)
    if p.exists():
        return local_source(p, variant).sha256
    return f"{ref}@{revision or 'main'}" + (f"#{variant}" if variant else "")


def config_fingerprint(cfg: EditConfig, models: ModelsConfig, engine: Engine) -> str:
    """Hash of everything shared by the items of a run that changes an output."""
    pin = "noop" if engine == "noop" else model_pin(models.sd, models.sd_revision, models.variant)
    payload = {"edit": cfg.model_dump(exclude=set(EXECUTION_ONLY)), "scheduler_class": scheduler_class_name(cfg.scheduler), "model": pin,
               "dtype": models.dtype, "engine": engine}
    if models.vae_dtype != "auto":  # auto follows dtype; left out so older hashes stay valid
        payload["vae_dtype"] = models.vae_dtype
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def concept_path(concept: str | None, concepts_root: str | Path | None) -> Path | str | None:
    """A concept name -> `<concepts_root>/<name>`; a value with a slash is a folder path. A URL
    (the concept's, or a root's `s3://bucket/concepts` + name) stays a URL string: item_hash and
    load_concept fetch it (lcd.concepts.io.fetch_concept)."""
    if concept is None:
        return None
    if storage.is_remote(concept):
        return concept.rstrip("/")
    if "/" in concept or concepts_root is None:
        return Path(concept)
    if storage.is_remote(str(concepts_root)):
        return str(storage.join(concepts_root, concept))
    return Path(concepts_root) / concept


def _file_hash(p: str, limits: IoConfig | None = None, failed: dict[str, LcdError] | None = None) -> str:
    if failed and p in failed:  # its read already failed in prefetch_remote_hashes: not waited for again
        raise failed[p]
    try:
        return sha256_file(p, limits=limits)
    except FileNotFoundError as e:
        raise InputImageError(f"{p}: {storage.not_found_message(e)}", item=p) from None
    except NotADirectoryError:
        raise InputImageError(f"{p}: file not found", item=p) from None
    except OSError as e:  # unreadable (permissions, I/O error): this item fails, not the shard
        raise InputImageError(f"{p}: cannot read: {e.strerror or e}", item=p) from None


def prefetch_remote_hashes(items: list[ManifestItem], limits: IoConfig | None, threads: int) -> dict[str, LcdError]:
    """Hash every remote input (image, mask) of `items` at once, `threads` at a time: a shard whose
    URLs hang waits about one deadline (io.http_*), not one per URL in turn. The hashes land in the
    memo (lcd.io.hashing) for item_hash; -> {URL: the LcdError its read raised}, for item_hash
    to raise again without a second wait."""
    from concurrent.futures import ThreadPoolExecutor

    urls = sorted({ref for it in items for ref in (it.image, it.mask) if ref and storage.is_remote(ref)})
    if len(urls) < 2:
        return {}

    def one(url: str) -> tuple[str, LcdError | None]:
        try:
            _file_hash(url, limits)
        except LcdError as e:
            return url, e
        except Exception:  # noqa: BLE001 - not ours to word: item_hash meets it again, in its own catch-all
            pass
        return url, None

    with ThreadPoolExecutor(min(threads, len(urls)), thread_name_prefix="lcd-hash") as pool:
        return {u: e for u, e in pool.map(one, urls) if e is not None}


def check_concept_dir(name: str | None, concept_dir: Path) -> None:
    """Raise LcdError naming the concept unless `concept_dir` is a folder holding the concept's
    weights file: a path like `/dev` or a photo folder is refused before anything under it is read."""
    from lcd.concepts.io import WEIGHTS_NAME

    if not concept_dir.exists():
        raise LcdError(f"concept {name!r}: weights folder {concept_dir} not found (train it first)",
                       item=str(concept_dir))
    if not concept_dir.is_dir():
        raise LcdError(f"concept {name!r}: {concept_dir} is not a folder (a concept is a folder holding "
                       f"{WEIGHTS_NAME})", item=str(concept_dir))
    if not (concept_dir / WEIGHTS_NAME).is_file():
        raise LcdError(f"concept {name!r}: {concept_dir} is not a concept folder (no {WEIGHTS_NAME} in it)",
                       item=str(concept_dir))


def _local_concept(name: str | None, concept_dir: Path | str, limits: IoConfig | None) -> Path:
    """The concept folder to hash: a URL's local copy (fetched once per machine), else itself."""
    if not storage.is_remote(str(concept_dir)):
        return Path(concept_dir)
    from lcd.concepts.io import fetch_concept

    try:
        return fetch_concept(str(concept_dir), limits)
    except LcdError as e:
        raise LcdError(f"concept {name!r}: {e}", item=str(concept_dir)) from None


def item_hash(item: ManifestItem, config_fp: str, concept_dir: Path | str | None,
              masks_store: "str | Path | MaskStore | None" = None, clip_pin: str | None = None,
              masks_cfg: MasksConfig | None = None, tree_hashes: dict[Path, str] | None = None,
              limits: IoConfig | None = None, failed_urls: dict[str, LcdError] | None = None) -> str:
    """sha256 over the item's input bytes and fields; raises InputImageError naming a missing file.
    `tree_hashes` memoises concept-folder hashes across the items of one shard: a concept's
    weights (and its checkpoints) are read once per shard, not once per item. Inputs by URL are
    read within `limits` (the `io` section): a URL that hangs or breaks is a NetworkError;
    `failed_urls` (prefetch_remote_hashes) are raised again without a second read."""
    concept_sha = None
    if concept_dir is not None:
        memo = tree_hashes if tree_hashes is not None else {}
        if concept_dir not in memo:
            local = _local_concept(item.concept, concept_dir, limits)
            check_concept_dir(item.concept, local)
            try:
                memo[concept_dir] = sha256_tree(local)
            except OSError as e:  # an unreadable file in the folder fails this item, not the shard
                raise LcdError(f"concept {item.concept!r}: cannot read {e.filename or concept_dir}: "
                               f"{e.strerror or e}", item=str(concept_dir)) from None
        concept_sha = memo[concept_dir]
    payload = {
        "image": _file_hash(item.image, limits, failed_urls),
        "region": _file_hash(item.mask, limits, failed_urls) if item.mask else region_fingerprint(item, masks_store, clip_pin, masks_cfg),
        "concept": concept_sha,
        "prompt": item.prompt,
        "seed": item.seed,
        "config": config_fp,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
