"""Which weight files of a diffusers folder are read, in every layout users download.

Why: `huggingface-cli download ... --include "*.fp16.safetensors" "*.json" "*.txt"` leaves
`unet/diffusion_pytorch_model.fp16.safetensors` and no plain file, which diffusers' loader only
finds when told `variant="fp16"`; older repositories hold `.bin` pickles only, or both formats;
the hub cache holds a snapshot of symlinks into `blobs/`; the SD1.5 repository holds the plain,
`fp16` and `non_ema` weights side by side. This module decides, per component, which files are
read, the way diffusers and transformers themselves look for them (variant first when one is
asked, falling back to the plain file for a component without it, as diffusers' pipelines do;
safetensors before pickles; a sharded index before a single file for diffusers models, after
it for transformers ones), so the loader can pass exactly that choice on and the pin
(`lcd.models.sources`) hashes exactly those files and not the other variants beside them.
Only JSON is read here (through `lcd.models.trust.read_config`); no weights.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from lcd.errors import ModelLoadError
from lcd.models.trust import MODEL_INDEX, read_config

VARIANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")  # "fp16", "non_ema", "bf16", "ema"
# components whose weights lcd loads, and their library's file stems per format
WEIGHT_COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2", "image_encoder")  # text_encoder_2: SDXL
NOT_LOADED = ("safety_checker", "feature_extractor")  # lcd always passes None for these
STEMS = {"diffusers": {"safetensors": "diffusion_pytorch_model", "bin": "diffusion_pytorch_model"},
         "transformers": {"safetensors": "model", "bin": "pytorch_model"}}
FORMATS = ("safetensors", "bin")  # preference order, as both libraries default to
SHARD = re.compile(r"-\d{5}-of-\d{5}$")  # "fp16-00001-of-00003": a shard of variant fp16
MAX_LISTED = 8  # files named in an error line
WEIGHT_EXTS = (".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".msgpack", ".onnx", ".onnx_data", ".pb", ".h5",
               ".gguf", ".flashpack")


@dataclass(frozen=True)
class ComponentWeights:
    """The weight files one component reads: `files` relative to the pipeline folder (an index
    first, then its shards), `variant` (None: the plain file) and `fmt` ("safetensors" | "bin")."""

    component: str
    library: str
    cls: str
    variant: str | None
    fmt: str
    files: tuple[str, ...]

    @property
    def use_safetensors(self) -> bool:
        return self.fmt == "safetensors"


@dataclass(frozen=True)
class FolderLayout:
    """What loading a diffusers folder reads: every weights component's choice and the other
    files (model_index.json, configs, tokenizer and scheduler files) of the loaded components."""

    folder: Path
    weights: tuple[ComponentWeights, ...]
    other_files: tuple[str, ...]

    @property
    def read_files(self) -> tuple[str, ...]:
        """Every file loading reads (relative, sorted): what the pin hashes."""
        return tuple(sorted(set(self.other_files) | {f for w in self.weights for f in w.files}))

    @property
    def variant(self) -> str | None:
        """The variant read (None when every component reads its plain files)."""
        found = sorted({w.variant for w in self.weights if w.variant})
        return ",".join(found) if found else None

    @property
    def weight_files(self) -> tuple[str, ...]:
        """One entry per component: its weights file, or its shard index."""
        return tuple(w.files[0] for w in self.weights)


def check_variant(variant: str | None, what: str = "models.variant") -> str | None:
    if variant is not None and not VARIANT.match(variant):
        raise ModelLoadError(f"{what} {variant[:80]!r}: a variant is a name like fp16 or non_ema "
                             "(letters, digits, _ and -)", item=what)
    return variant


def _names(sub: Path) -> list[str]:
    return sorted(p.name for p in sub.iterdir()) if sub.is_dir() else []


def _there(names: list[str], sub: Path | None = None) -> str:
    """Names for an error line; with `sub`, a link to nothing or to a device says so (a hub
    snapshot whose blob never finished downloading, a link to /dev/zero)."""
    def shown_name(n: str) -> str:
        p = sub / n if sub is not None else None
        if p is None or p.is_file() or p.is_dir():
            return n
        return f"{n} (broken link)" if not p.exists() else f"{n} (not a regular file)"

    shown = ", ".join(shown_name(n) for n in names[:MAX_LISTED]) or "nothing"
    return shown + (f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else "")


def _shards(folder: Path, component: str, index_name: str) -> tuple[str, ...]:
    """An index file and the shard files its weight_map names, each a plain file beside it."""
    index = folder / component / index_name
    data = read_config(index)
    wmap = data.get("weight_map")
    if not isinstance(wmap, dict) or not wmap:
        raise ModelLoadError(f"{index}: a shard index needs a non-empty 'weight_map' object", item=str(index))
    bad = next((s for s in wmap.values() if not isinstance(s, str)), None)
    if bad is not None:
        raise ModelLoadError(f"{index}: 'weight_map' values must be shard file names, got {type(bad).__name__}",
                             item=str(index))
    shards = sorted(set(wmap.values()))
    for s in shards:
        if not s or not s.isprintable() or "/" in s or "\\" in s or s in (".", "..") or s.startswith("."):
            raise ModelLoadError(f"{index}: shard {str(s)[:80]!r} is not a file name beside the index "
                                 "(a path reaching outside the component folder is refused)", item=str(index))
        if not (folder / component / s).is_file():
            what = "missing" if not (folder / component / s).exists() else "not a regular file"
            raise ModelLoadError(f"{index}: shard {s[:80]} is {what}", item=str(index))
    return (f"{component}/{index_name}",) + tuple(f"{component}/{s}" for s in shards)


def _candidates(library: str, variant: str | None, fmt: str) -> list[tuple[str, bool]]:
    """(file name, is an index) in the order the library looks for them."""
    stem = STEMS[library][fmt]
    v = f".{variant}" if variant else ""
    single = (f"{stem}{v}.{fmt}", False)
    index = [(f"{stem}.{fmt}.index{v}.json", True)]
    if variant and library == "diffusers":
        index.append((f"{stem}.{fmt}.{variant}.index.json", True))  # diffusers' legacy variant index
    return index + [single] if library == "diffusers" else [single] + index


def find_weights(folder: Path, component: str, library: str, cls: str, variant: str | None,
                 fmt: str) -> ComponentWeights | None:
    """The files `component` reads for this variant and format, None when it has none."""
    for name, is_index in _candidates(library, variant, fmt):
        p = folder / component / name
        if p.is_file():  # follows the hub cache's symlinks into blobs/, as the libraries do
            files = _shards(folder, component, name) if is_index else (f"{component}/{name}",)
            return ComponentWeights(component, library, cls, variant, fmt, files)
    return None


def variants_present(names: list[str], library: str) -> list[str]:
    """The variant names among a component's file names (plain files excluded)."""
    found = set()
    for fmt in FORMATS:
        stem = re.escape(STEMS[library][fmt])
        for rx in (rf"^{stem}\.([^.]+)\.{fmt}$", rf"^{stem}\.{fmt}\.index\.([^.]+)\.json$",
                   rf"^{stem}\.{fmt}\.([^.]+)\.index\.json$"):
            found |= {SHARD.sub("", m.group(1)) for n in names if (m := re.match(rx, n))}
    found = {v for v in found if VARIANT.match(v)}
    return sorted(found - {"index"})


def _choose(folder: Path, component: str, library: str, cls: str, variant: str | None) -> ComponentWeights | None:
    """Asked variant first, then the plain files; with no variant asked, the one variant there
    when the plain files are missing. None: no variant file and no plain file."""
    order = ([variant] if variant else []) + [None]
    for v in order:
        for fmt in FORMATS:
            if (w := find_weights(folder, component, library, cls, v, fmt)) is not None:
                return w
    if variant is None:
        present = variants_present(_names(folder / component), library)
        usable = [v for v in present
                  if any(find_weights(folder, component, library, cls, v, f) for f in FORMATS)]
        if len(usable) > 1:
            raise ModelLoadError(
                f"{folder / component}: weights of variants {', '.join(map(repr, usable))} and no plain file; "
                "set models.variant (lcd edit --variant) to choose one", item=str(folder))
        if usable:
            return _choose(folder, component, library, cls, usable[0])
    return None


def sd_layout(folder: str | Path, variant: str | None = None) -> FolderLayout:
    """The files loading the diffusers SD folder `folder` reads with models.variant `variant`.

    Raises ModelLoadError (one line) when a component has no weights, when the asked variant is
    in no component (naming the folder, the variant and what is there), or when only several
    variants are there and none was asked."""
    folder = Path(folder)
    check_variant(variant)
    index = read_config(folder / MODEL_INDEX)
    weights, other, missing = [], [MODEL_INDEX], []
    for name in sorted(index):
        value = index[name]
        if name.startswith("_") or name in NOT_LOADED or not isinstance(value, list) or len(value) != 2 \
                or not all(isinstance(x, str) for x in value):
            continue
        library, cls = value
        sub = folder / name
        loads_weights = name in WEIGHT_COMPONENTS and library in STEMS
        if loads_weights:
            w = _choose(folder, name, library, cls, variant)
            if w is None:
                missing.append((sub, library))
            else:
                weights.append(w)
        # configs, tokenizer and scheduler files; never weights of another variant or format
        other += [f"{name}/{n}" for n in _names(sub) if not n.startswith(".") and (sub / n).is_file()
                  and not is_weight_name(n)]
    if variant is not None and not any(w.variant == variant for w in weights):
        there = "; ".join(f"{c}: {_there(_weight_names(folder / c))}" for c in sorted(index)
                          if c in WEIGHT_COMPONENTS and (folder / c).is_dir())
        raise ModelLoadError(f"{folder}: no weights of variant {variant!r} in any component (there: {there}); "
                             "set models.variant to one of these or null", item=str(folder))
    if missing:  # the first component without weights, by name
        sub, library = missing[0]
        stem = STEMS[library]["safetensors"]
        raise ModelLoadError(f"{sub}: no weights ({stem}[.<variant>].safetensors or .bin"
                             f"{f' of variant {variant!r}' if variant else ''}); there: {_there(_names(sub), sub)}",
                             item=str(folder))
    return FolderLayout(folder=folder, weights=tuple(weights), other_files=tuple(other))


def is_weight_name(name: str) -> bool:
    """A weights file, shard or shard index (any library, variant or format: safetensors, bin,
    ckpt, flax, onnx, gguf): what a component folder may hold beside the weights it reads."""
    return name.endswith(WEIGHT_EXTS) or re.search(r"\.index(\.[^.]+)?\.json$", name) is not None


def _weight_names(sub: Path) -> list[str]:
    return [n for n in _names(sub) if is_weight_name(n)] or ["no weights"]


def hub_cache_snapshot(repo: Path, revision: str | None) -> tuple[Path, str] | None:
    """A hub cache repository folder (`models--owner--name`, with refs/ and snapshots/) ->
    (its snapshot of `revision`, the commit); None when `repo` is not one."""
    if not ((repo / "snapshots").is_dir() and not (repo / MODEL_INDEX).exists()):
        return None
    rev = revision or "main"
    ref = repo / "refs" / rev
    if re.fullmatch(r"[0-9a-f]{40}", rev):
        commit = rev
    elif "/" not in rev and ".." not in rev and ref.is_file():
        with open(ref, "rb") as f:  # a ref is one commit hash: never read more
            commit = f.read(100).decode("utf-8", errors="replace").strip()
    else:
        raise ModelLoadError(f"{repo}: a hub cache folder without refs/{rev[:60]} (refs there: "
                             f"{_there(_names(repo / 'refs'))})", item=str(repo))
    snap = repo / "snapshots" / commit
    if not re.fullmatch(r"[0-9a-f]{40}", commit) or not snap.is_dir():
        raise ModelLoadError(f"{repo}: revision {rev[:60]} names commit {commit[:60]!r}, which has no snapshot "
                             f"(snapshots there: {_there(_names(repo / 'snapshots'))})", item=str(repo))
    return snap, commit
