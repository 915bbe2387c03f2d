"""References to local paths and pins, before any weights load: dtypes and devices, hub ids and
snapshots, hub-cache folders, SD folders' layouts, and the trust check (lcd.models.trust) that
runs on every folder before diffusers or transformers reads it. The loaders (lcd.models.loader
for Stable Diffusion, lcd.models.encoders for SAM, CLIP, DINO and open_clip) build on these.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import torch

from lcd.errors import ModelLoadError
from lcd.models import remote
from lcd.io.torchfile import error_line
from lcd.models.trust import check_sd_folder, check_transformers_folder
from lcd.models.layout import WEIGHT_COMPONENTS, FolderLayout, check_variant, hub_cache_snapshot, sd_layout
from lcd.models.sources import ModelSource, content_source, is_hub_id, layout_source, local_source

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
SD_WEIGHT_PATTERNS = ["*.json", "*.txt", "*.safetensors"]


def to_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ModelLoadError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}", item="dtype")
    return DTYPES[dtype]


def check_device(device: str | torch.device) -> torch.device:
    """A device string -> torch.device, or a one-line error before any weights load: an unknown
    name, or cuda/mps on a machine where PyTorch sees none."""
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as e:
        raise ModelLoadError(f"device {device!r} is not a torch device (cpu, cuda, cuda:N, mps): {e}",
                             item="device") from None
    if d.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r}: PyTorch sees no CUDA GPU on this machine "
                             "(torch.cuda.is_available() is False); use --device cpu", item="device")
    if d.type == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError(f"device {device!r}: no Apple MPS device here; use --device cpu", item="device")
    return d


def _hub_snapshot(ref: str, revision: str | None, patterns: list[str]) -> tuple[Path, ModelSource]:
    """Resolve a hub id to a local snapshot (download or cache) pinned by its commit."""
    from huggingface_hub import snapshot_download

    try:
        path = Path(snapshot_download(ref, revision=revision, allow_patterns=patterns))
    except Exception as e:  # offline, unknown repo, bad revision: all user-facing
        raise ModelLoadError(
            f"{ref}: cannot resolve hub model (revision {revision or 'main'}): {error_line(e)}",
            item=ref,
        ) from None
    return path, ModelSource(ref=ref, kind="hub", revision=path.name)


SD_CONFIG_PATTERNS = ["model_index.json", "*/*.json", "*/*.txt"]


def sd_hub_rounds(variant: str | None) -> list[list[str]]:
    """What to download of a hub SD repository, narrowest first: configs and the components'
    weights (never the single-file checkpoints at the top of SD1.5's repository), with a variant
    its files only; then all safetensors (a component without the variant reads its plain file);
    then the `.bin` pickles of a repository that has no safetensors. Each round adds to the one
    before; the next runs only when the folder's layout still lacks weights."""
    def weights(*names: str) -> list[str]:
        return [f"{c}/{n}" for c in WEIGHT_COMPONENTS for n in names]  # not the safety checker's

    rounds = [weights(f"*.{variant}.safetensors", f"*.{variant}-*.safetensors")] if variant else []
    rounds += [weights("*.safetensors"), weights("*.bin")]
    return [SD_CONFIG_PATTERNS + [p for r in rounds[: i + 1] for p in r] for i in range(len(rounds))]


def _sd_hub_folder(ref: str, revision: str | None, variant: str | None) -> tuple[Path, FolderLayout, str]:
    """A hub id -> (its checked snapshot, the layout read, the commit), downloading no more than
    the layout needs (sd_hub_rounds). Offline (HF_HUB_OFFLINE=1) the cache is read as it is."""
    from huggingface_hub import constants

    rounds = sd_hub_rounds(variant)
    for i, patterns in enumerate(rounds):
        path, source = _hub_snapshot(ref, revision, patterns)
        revision = source.revision  # later rounds: the same commit
        check_sd_reference(path)
        if not (path / "model_index.json").exists():
            raise ModelLoadError(f"{ref}: not a diffusers pipeline repository (no model_index.json)", item=ref)
        try:
            return path, sd_layout(path, variant), source.revision
        except ModelLoadError:
            if constants.HF_HUB_OFFLINE or i == len(rounds) - 1:
                raise
    raise AssertionError("unreachable")


def resolve(ref: str | Path, revision: str | None = None, patterns: list[str] | None = None,
            check: Callable[[Path], None] | None = None):
    """Reference -> (local path, ModelSource). Missing local paths are a clear error. `check`
    runs on the local path (a hub snapshot once downloaded) before it is hashed or loaded."""
    ref = str(ref)
    if is_hub_id(ref):
        path, source = _hub_snapshot(ref, revision, patterns or SD_WEIGHT_PATTERNS)
        if check is not None:
            check(path)
        return path, source
    p = remote.fetch_model(ref) if remote.is_url(ref) else Path(ref)  # a URL: its local copy (lcd.models.remote)
    if not p.exists():
        raise ModelLoadError(f"{ref}: model path not found (and not a hub id 'owner/name')", item=ref)
    if check is not None:
        check(p)
    return p, content_source(p, ref)  # SD model folders resolve through resolve_sd


def resolve_sd(ref: str | Path, revision: str | None = None, variant: str | None = None):
    """An SD reference -> (local path, ModelSource, FolderLayout or None for a single file).

    A hub id (downloaded or read from the cache, HF_HUB_OFFLINE=1 included), a hub cache
    repository folder (`models--owner--name`: its snapshot of `revision`, default refs/main), a
    snapshot or any diffusers folder, or one checkpoint file. A folder is checked
    (lcd.models.trust) before anything else of it is read; its layout says which weight files
    of which variant load, and the pin hashes those (hub ids: the commit)."""
    ref = str(ref)
    check_variant(variant)
    if is_hub_id(ref):
        path, layout, commit = _sd_hub_folder(ref, revision, variant)
        return path, layout_source(ref, layout, kind="hub", revision=commit), layout
    path, commit = remote.fetch_model(ref) if remote.is_url(ref) else Path(ref), None  # a URL: its local copy
    if not path.exists():
        raise ModelLoadError(f"{ref}: model path not found (and not a hub id 'owner/name')", item=ref)
    if path.is_dir() and (snap := hub_cache_snapshot(path, revision)) is not None:
        path, commit = snap
    check_sd_reference(path)
    if not path.is_dir():
        return path, remote.with_url(local_source(path), ref) if remote.is_url(ref) else local_source(path), None
    if not (path / "model_index.json").exists():
        raise ModelLoadError(f"{ref}: not a diffusers pipeline folder (no model_index.json)", item=ref)
    layout = sd_layout(path, variant)
    return path, layout_source(ref, layout, revision=commit), layout


def check_sd_reference(path: Path, revision: str | None = None) -> None:
    """A diffusers folder (a hub cache repository folder: its snapshot of `revision`) names only
    known libraries and classes (lcd.models.trust); a single file holds tensors only (read with
    weights_only / safetensors)."""
    if path.is_dir():
        snap = hub_cache_snapshot(path, revision)
        check_sd_folder(snap[0] if snap is not None else path)


def check_local_models(models, names: tuple[str, ...] = ("sd",)) -> None:
    """Check the local folders a `ModelsConfig` names for `names` ("sd": the SD reference and its
    single-file config; "clip") before a run starts, so a folder naming code is refused once, in
    one line, not per item. Hub ids are checked once downloaded, by the loaders themselves."""
    refs = {"sd": [(models.sd, lambda p: check_sd_reference(p, models.sd_revision)),
                   (models.sd_single_file_config, check_sd_folder)],
            "clip": [(models.clip, lambda p: check_transformers_folder(p, "CLIP"))]}
    for name in names:
        for ref, check in refs[name]:
            if ref is not None and Path(ref).exists():
                check(Path(ref))


@contextmanager
def quiet_unpickler() -> Iterator[None]:
    """Hide torch's weights-only unpickler warning ("Detected pickle protocol 4 ..."), raised
    while diffusers reads a `.ckpt` (with weights_only=True): read or refused in one line, with
    no warning line before it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
        yield
