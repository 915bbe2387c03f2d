"""Concept folders: save, load, apply to a pipeline (diffusers' layout: lcd.concepts.custom_diffusion).

A concept folder holds
    concept.safetensors  'text.embeddings' (n_tokens, D) float32 (SDXL: also 'text_2.embeddings'
                         (n_tokens, D2), the second text encoder's rows) and 'unet.<param name>' tensors:
                         full replacement weights for 'kv'/'crossattn', or '<module>.lora_A'
                         (r, in) / '<module>.lora_B' (out, r) for 'lora' and for compressed
                         ('lowrank' layout) K/V concepts, W = W0 + lora_scale * B @ A;
                         metadata: tokens, method, layout, family ('sd15' when absent)
    card.json            base model source and hash, tokens, class words, resolved config, steps,
                         hashes of the training photos
    README.md            the card for people
Applying a concept modifies the pipeline in place (models are too large to copy): its tokens are
added to the tokenizer, their rows appended to the text encoder's embedding, and the UNet tensors
replaced (or, for LoRA, the low-rank update merged into the base weights).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from lcd.concepts.tokens import CONCEPT_TOKEN
from lcd.errors import ModelLoadError, PromptError
from lcd.io.atomic import atomic_path, write_text_atomic

WEIGHTS_NAME = "concept.safetensors"
CARD_NAME = "card.json"
DIFFUSERS_WEIGHTS_NAME = "pytorch_custom_diffusion_weights.safetensors"
DIFFUSERS_WEIGHTS_NAME_BIN = "pytorch_custom_diffusion_weights.bin"
# the UNet modules each method changes, as module-name suffixes (LoRA adapts the K/V modules)
KV_SUFFIXES = ("attn2.to_k", "attn2.to_v")
CROSSATTN_SUFFIXES = ("attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0")
METHOD_MODULES = {"kv": KV_SUFFIXES, "lora": KV_SUFFIXES, "crossattn": CROSSATTN_SUFFIXES, "full": ("",)}
LAYOUT_LEAVES = {"full": ("weight", "bias"), "lowrank": ("lora_A", "lora_B")}


@dataclass
class Concept:
    """What a fine-tune learned. `unet` tensors are keyed by UNet parameter name (or LoRA keys)."""

    tokens: list[str]
    embeddings: torch.Tensor  # (n_tokens, D) float32
    method: str  # 'kv' | 'crossattn' | 'lora'
    unet: dict[str, torch.Tensor] = field(default_factory=dict)
    lora_scale: float = 1.0  # alpha / rank
    card: dict[str, Any] = field(default_factory=dict)
    name: str = "concept"
    layout: str = "full"  # 'full' (replacement tensors) | 'lowrank' (lora_A/lora_B deltas; always for 'lora')
    embeddings_2: torch.Tensor | None = None  # SDXL: the second text encoder's rows (n_tokens, D2); SD1.5: None

    def __post_init__(self):
        if self.method == "lora":
            self.layout = "lowrank"

    @property
    def lowrank(self) -> bool:
        """True when `unet` holds '<module>.lora_A' (r, in) / '.lora_B' (out, r) deltas:
        W = W0 + lora_scale * lora_B @ lora_A (a trained LoRA, or a compressed K/V concept)."""
        return self.layout == "lowrank"

    @property
    def family(self) -> str:
        """'sdxl' when the concept holds rows for a second text encoder, else 'sd15'."""
        return "sd15" if self.embeddings_2 is None else "sdxl"

    @property
    def rows(self) -> list[torch.Tensor]:
        """The token rows per text encoder, in the family's encoder order (lcd.concepts.family)."""
        return [self.embeddings] + ([] if self.embeddings_2 is None else [self.embeddings_2])

    @property
    def modules(self) -> list[str]:
        """UNet module paths the concept changes ('...attn2.to_k'), sorted."""
        return sorted({k.rsplit(".", 1)[0] for k in self.unet})


def check_token(token: str, tokenizer, item: str = "token") -> None:
    """A concept token must look like `[NAME]` and must not already be a token of the vocabulary."""
    if not CONCEPT_TOKEN.fullmatch(token):
        raise PromptError(f"{item}: concept token {token!r} must look like [NAME] (letters, digits, _ or -)", item=item)
    if token in tokenizer.get_vocab():
        raise PromptError(
            f"{item}: token {token} is already in the tokenizer's vocabulary; pick another name "
            "(a concept token must be new, or it would overwrite a word the model knows)",
            item=item,
        )


def add_tokens(tokenizer, text_encoder, tokens: Sequence[str], rows: torch.Tensor, item: str = "concept") -> list[int]:
    """Add `tokens` with embedding `rows` (n, D); every existing row stays bit-identical. -> new ids."""
    emb = text_encoder.get_input_embeddings()
    if rows.shape != (len(tokens), emb.weight.shape[1]):
        raise ModelLoadError(
            f"{item}: token embeddings have shape {tuple(rows.shape)} but this text encoder needs "
            f"({len(tokens)}, {emb.weight.shape[1]})",
            item=item,
        )
    for t in tokens:
        check_token(t, tokenizer, item)
    tokenizer.add_tokens(list(tokens))
    ids = tokenizer.convert_tokens_to_ids(list(tokens))
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():
        w = text_encoder.get_input_embeddings().weight
        w[ids] = rows.to(device=w.device, dtype=w.dtype)
    return ids


def check_unet_shapes(concept: Concept, unet) -> dict[str, torch.nn.Parameter]:
    """Every tensor of `concept` fits a parameter of `unet` (ModelLoadError naming the concept
    otherwise) -> `unet`'s named parameters."""
    params = dict(unet.named_parameters())
    if concept.lowrank:
        for m in concept.modules:
            a, b = concept.unet.get(f"{m}.lora_A"), concept.unet.get(f"{m}.lora_B")
            if a is None or b is None or a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
                raise ModelLoadError(f"{concept.name}: {m}: needs a 2-d lora_A (r, in) and lora_B (out, r) of one "
                                     "rank r", item=concept.name)
            w = params.get(f"{m}.weight")
            if w is None:
                raise ModelLoadError(f"{concept.name}: base UNet has no module {m}", item=concept.name)
            need = (b.shape[0], a.shape[1])
            if tuple(w.shape) != need:
                raise ModelLoadError(
                    f"{concept.name}: {m}: concept LoRA gives shape {need} but the base weight is "
                    f"{tuple(w.shape)}; the concept was trained on a different base model",
                    item=concept.name,
                )
        return params
    for k, t in concept.unet.items():
        p = params.get(k)
        if p is None:
            raise ModelLoadError(f"{concept.name}: base UNet has no parameter {k}", item=concept.name)
        if tuple(p.shape) != tuple(t.shape):
            raise ModelLoadError(
                f"{concept.name}: {k}: concept shape {tuple(t.shape)} but base shape {tuple(p.shape)}; "
                "the concept was trained on a different base model",
                item=concept.name,
            )
    return params


def apply_concepts(pipe, concepts: Sequence[Concept]):
    """Apply concepts to a diffusers SD pipeline in place and return it.

    Shapes are all checked before anything changes. At most one concept may carry K/V weights
    ('kv'/'crossattn', full or compressed), since a second would overwrite (or blindly add to) the
    first; LoRA updates add up.
    """
    # 1. check everything first, so a bad concept leaves the pipeline untouched
    from lcd.concepts.validate import check_against_base, check_concept

    full = [c.name for c in concepts if c.method != "lora" and c.unet]
    if len(full) > 1:
        raise ModelLoadError(
            f"concepts {full[0]} and {full[1]} both replace the cross-attention K/V weights; "
            "merge them first (lcd concept merge) or train them jointly (one run with several concepts)",
            item=full[1],
        )
    seen: set[str] = set()
    for c in concepts:
        check_concept(c)  # the file checks again: a Concept may be built in memory
        check_against_base(c, pipe.unet, pipe.text_encoder, getattr(pipe, "text_encoder_2", None))
        for t in c.tokens:
            check_token(t, pipe.tokenizer, c.name)
            if t in seen:
                raise PromptError(f"{c.name}: token {t} is defined by two concepts", item=c.name)
            seen.add(t)
    # 2. apply: the tokens into every text encoder of the family (SDXL: both), then the UNet
    from lcd.concepts.family import family_of

    for c in concepts:
        for (tok, te), rows in zip(family_of(pipe).text_encoders(pipe), c.rows):
            add_tokens(tok, te, c.tokens, rows, c.name)
        params = dict(pipe.unet.named_parameters())
        with torch.no_grad():
            if c.lowrank:
                for m in c.modules:
                    w = params[f"{m}.weight"]
                    delta = c.lora_scale * (c.unet[f"{m}.lora_B"].float() @ c.unet[f"{m}.lora_A"].float())
                    w.copy_((w.float() + delta.to(w.device)).to(w.dtype))
            else:
                for k, t in c.unet.items():
                    params[k].copy_(t.to(device=params[k].device, dtype=params[k].dtype))
    return pipe


def base_mismatch(concept: Concept, source) -> str | None:
    """A warning when the concept was trained on other weights than `source` (a ModelSource) pins.

    Same shapes but other weights load without error and give degraded results, so callers
    print this; None when the pins match or the card does not record one (imported weights)."""
    base = concept.card.get("base") or {}
    theirs = base.get("sha256") or base.get("revision")
    ours = source.sha256 or source.revision
    if not theirs or not ours or theirs == ours:
        return None
    return (f"{concept.name}: trained on {base.get('ref')} ({str(theirs)[:12]}) but applied to "
            f"{source.ref} ({str(ours)[:12]}); results may degrade")


def save_concept(concept: Concept, out_dir: str | Path) -> Path:
    """Write concept.safetensors + card.json + README.md atomically (file by file)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    tensors = {"text.embeddings": concept.embeddings.detach().float().cpu().contiguous()}
    if concept.embeddings_2 is not None:
        tensors["text_2.embeddings"] = concept.embeddings_2.detach().float().cpu().contiguous()
    tensors.update({f"unet.{k}": v.detach().cpu().contiguous() for k, v in concept.unet.items()})
    meta = {"tokens": json.dumps(concept.tokens), "method": concept.method, "lora_scale": repr(concept.lora_scale),
            "layout": concept.layout, "config": json.dumps(concept.card.get("config", {}), sort_keys=True),
            "family": concept.family}
    with atomic_path(out / WEIGHTS_NAME) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    card = dict(concept.card, tokens=concept.tokens, method=concept.method, lora_scale=concept.lora_scale,
                layout=concept.layout)
    write_text_atomic(out / CARD_NAME, json.dumps(card, indent=2, sort_keys=True, default=str))
    write_text_atomic(out / "README.md", _readme(card))
    return out


def _readme(card: dict) -> str:
    base = card.get("base", {})
    lines = [
        f"# Concept {', '.join(card['tokens'])}",
        "",
        f"- class words: {', '.join(card.get('class_words', [])) or 'unknown'}",
        f"- method: {card['method']}, steps: {card.get('steps', '?')}",
        f"- base model: {base.get('ref', '?')} (sha256 {base.get('sha256') or base.get('revision') or '?'})",
        f"- photos: {len(card.get('photos', []))}",
    ]
    comp = card.get("compression")
    if comp:
        lines.append(f"- compressed: rank {comp['min_rank']}-{comp['max_rank']}, "
                     f"energy kept {comp['energy_kept']:.4f} (asked: {comp.get('rank') or comp.get('energy')})")
    if card.get("merged_from"):
        lines.append(f"- merged from: {', '.join(m['name'] for m in card['merged_from'])}")
    lines += [
        "",
        f"Use: `lcd edit --concept <this folder> --prompt \"a photo of {card['tokens'][0]} ...\"`.",
    ]
    return "\n".join(lines) + "\n"


def concept_weights_file(folder: str | Path) -> Path:
    """`folder`'s concept weights file; ModelLoadError naming the folder when it holds none (a
    photo folder, a file, /dev)."""
    f = Path(folder) / WEIGHTS_NAME
    if not f.is_file():
        raise ModelLoadError(f"{folder}: not a concept folder (no {WEIGHTS_NAME})", item=str(folder))
    return f


def read_concept_header(folder: str | Path) -> tuple[Path, dict[str, str], dict]:
    """(weights file, safetensors metadata, {key: TensorSpec}) read off the header (no tensor
    loaded), after the file checks that need no values (lcd.concepts.validate): metadata types,
    keys, dtypes, ranks and pairs. Backs `lcd concept list` and `load_concept`."""
    from safetensors import safe_open

    from lcd.concepts.validate import TensorSpec, check_metadata, check_structure

    f = concept_weights_file(folder)
    try:
        with safe_open(str(f), framework="pt") as sf:
            meta = sf.metadata() or {}
            specs = {k: TensorSpec.of_header(sl.get_shape(), sl.get_dtype())
                     for k in sf.keys() for sl in [sf.get_slice(k)]}
    except Exception as e:  # noqa: BLE001 - safetensors raises its own types for a corrupt header
        raise ModelLoadError(f"{f}: cannot read concept weights: {_one_line(e)}", item=str(folder)) from None
    tokens, method, layout, _ = check_metadata(meta, str(f))
    check_structure(tokens, method, layout, specs, str(f), family=meta.get("family"))
    return f, meta, specs


def fetch_concept(folder: str | Path, limits=None) -> Path:
    """A concept folder at a URL (`s3://bucket/concepts/dog`) -> its local copy in the fetch cache
    (lcd.io.cache, keyed by the URL and its objects' ETags and sizes: fetched once per machine,
    again when an object changes), its header checked (lcd.concepts.validate) before any use.
    Only the folder's own files are fetched, not `training/` (checkpoints, losses): editing reads
    the weights and the card. A local folder is returned as it is. ModelLoadError naming the URL."""
    from lcd.errors import LcdError
    from lcd.io import cache, storage

    if not storage.is_remote(str(folder)):
        return Path(folder)
    url, local = str(folder).rstrip("/"), None
    try:
        listing = {k: v for k, v in cache.folder_listing(url, limits).items() if "/" not in k}
        if WEIGHTS_NAME not in listing:
            raise ModelLoadError(f"{url}: not a concept folder (no {WEIGHTS_NAME})", item=url)
        local = cache.fetch_folder(url, limits, listing=listing)
        read_concept_header(local)
    except LcdError as e:  # named by the URL, not by the cache folder
        raise ModelLoadError(str(e).replace(str(local), url) if local else str(e), item=url) from None
    return local


def load_concept(folder: str | Path) -> Concept:
    """Read a concept folder written by `save_concept` (or at a URL: fetch_concept), refusing
    (ModelLoadError, one line naming the file) anything `apply_concepts` could not apply: every
    check of lcd.concepts.validate that needs no base model."""
    from safetensors import safe_open

    from lcd.concepts.validate import check_card, check_metadata, check_values

    p = fetch_concept(folder)
    f, meta, _ = read_concept_header(p)
    tokens, method, layout, scale = check_metadata(meta, str(f))
    try:
        with safe_open(str(f), framework="pt") as sf:
            tensors = {k: sf.get_tensor(k) for k in sf.keys()}
    except Exception as e:  # noqa: BLE001 - a truncated body reads as a safetensors error
        raise ModelLoadError(f"{f}: cannot read concept weights: {_one_line(e)}", item=str(p)) from None
    check_values(tensors, str(f))  # NaN/inf weights would paint the region black and be recorded "edited"
    card = read_card(p)
    check_card(card, str(p / CARD_NAME))
    unet = {k[len("unet."):]: v for k, v in tensors.items() if k.startswith("unet.")}
    name = str(folder).rstrip("/") if p != Path(folder) else str(p)  # a URL's concept is named by it
    return Concept(tokens, tensors["text.embeddings"], method, unet, scale, card, name, layout,
                   tensors.get("text_2.embeddings"))


def tensor_problem(method: str, layout: str, unet: dict[str, Any]) -> str | None:
    """Why a concept's UNet tensors cannot be what its `method` and `layout` say, or None: every
    key must be a weight/bias ('full') or lora_A/lora_B ('lowrank') of a module the method trains."""
    if method not in METHOD_MODULES:
        return f"unknown method {method!r} (expected one of {', '.join(METHOD_MODULES)})"
    if layout not in LAYOUT_LEAVES:
        return f"unknown layout {layout!r} (expected one of {', '.join(LAYOUT_LEAVES)})"
    if method == "lora" and layout != "lowrank":
        return "method 'lora' needs the lowrank layout (lora_A/lora_B tensors)"
    for key in unet:
        module, _, leaf = key.rpartition(".")
        if leaf not in LAYOUT_LEAVES[layout] or not module.endswith(METHOD_MODULES[method]):
            return (f"method {method!r} ({layout} layout) does not match its tensors: unet.{key} is not "
                    f"one it changes; the card or the weights are from another concept")
    return None


def read_card(folder: str | Path) -> dict:
    """card.json as a dict ({} when absent); anything else is a one-line error naming the file."""
    path = Path(folder) / CARD_NAME
    if not path.exists():
        return {}
    from lcd.errors import LcdError
    from lcd.io.documents import parse_json, read_document_bytes

    try:  # size, nesting and repeated keys limited; binary and UTF-16 named (lcd.io.documents)
        card = parse_json(read_document_bytes(path, "card"), str(path))
    except LcdError as e:
        why = str(e).removeprefix(f"{path}: ").removeprefix("not valid JSON: ")
        raise ModelLoadError(f"{path}: card is not readable JSON: {why}",
                             item=str(folder)) from None
    if not isinstance(card, dict):
        raise ModelLoadError(f"{path}: card must be a JSON object, got {type(card).__name__}", item=str(folder))
    for key, kind in (("base", dict), ("class_words", list), ("photos", list)):  # what readers index into
        if card.get(key) is not None and not isinstance(card[key], kind):
            raise ModelLoadError(f"{path}: card field {key!r} must be a JSON {'object' if kind is dict else 'array'}, "
                                 f"got {type(card[key]).__name__}", item=str(folder))
    return card


def _one_line(e: Exception) -> str:
    """`Type: reason` (lcd.io.torchfile.error_line): torch.load's refusals run to many lines, and
    go on to suggest weights_only=False, which would run whatever code the file holds."""
    from lcd.io.torchfile import error_line

    return error_line(e)


def __getattr__(name: str):
    """diffusers' Custom Diffusion layout lives in lcd.concepts.custom_diffusion; its functions are
    still found here, where their callers have always imported them (loaded on first use, so
    neither module needs the other at import)."""
    if name in ("export_diffusers", "import_diffusers", "token_file_name"):
        from lcd.concepts import custom_diffusion

        return getattr(custom_diffusion, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
