"""Is a concept what it claims to be? The checks run where a concept crosses into the program.

A concept folder comes from anywhere (a trainer, an import, a download), and applying a broken
one used to fail deep inside torch (a TypeError on a numeric `tokens`, an IndexError on a 0-d
embedding, a KeyError on a lora_A without its lora_B, a RuntimeError on mismatched ranks) or,
worse, to succeed: a `lora_scale` of NaN or 1e308 paints the region black. Every check here
raises ModelLoadError with one line naming the concept's file and the reason.

Two kinds, because the base model is loaded long after the file is read:
- file checks (`check_metadata`, `check_structure`, `check_values`, `check_card`): need only the
  concept; run by `load_concept`, `lcd concept show|list` (header only for list) and import, and
  by `apply_concepts` for concepts built in memory;
- base checks (`check_against_base`): shapes against the base UNet and text encoder, and that the
  merged weights stay finite in the base's dtype; run by `apply_concepts` before anything changes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from lcd.concepts.tokens import CONCEPT_TOKEN
from lcd.errors import ModelLoadError

# alpha / rank: 1/rank .. a few dozen in practice; past this the update swamps the base weights
MAX_LORA_SCALE = 1e3
_PAIR = {"lora_A": "lora_B", "lora_B": "lora_A"}


@dataclass(frozen=True)
class TensorSpec:
    """What the checks need of a tensor: its shape and dtype, read off a safetensors header
    (nothing loaded) or off a tensor in memory."""

    shape: tuple[int, ...]
    dtype: str  # safetensors' ('F32', 'I64', 'BOOL') or torch's ('torch.float32') spelling
    floating: bool

    @classmethod
    def of_tensor(cls, t: Any) -> "TensorSpec":
        if not isinstance(t, torch.Tensor):
            return cls((), type(t).__name__, False)
        return cls(tuple(t.shape), str(t.dtype).removeprefix("torch."), t.is_floating_point())

    @classmethod
    def of_header(cls, shape, dtype: str) -> "TensorSpec":
        return cls(tuple(int(s) for s in shape), dtype, dtype.startswith(("F", "BF")))


def _fail(where: str, reason: str) -> ModelLoadError:
    return ModelLoadError(f"{where}: {reason}", item=where)


def check_tokens(tokens: Any, where: str) -> list[str]:
    """A non-empty list of distinct `[NAME]` strings -> the list."""
    if not isinstance(tokens, list) or not tokens:
        raise _fail(where, f"metadata 'tokens' must be a non-empty list of concept tokens like [P], "
                           f"got {_short(tokens)}")
    for t in tokens:
        if not isinstance(t, str) or not CONCEPT_TOKEN.fullmatch(t):
            raise _fail(where, f"concept token {_short(t)} must be a string like [NAME] (letters, digits, _ or -)")
    if len(set(tokens)) != len(tokens):
        raise _fail(where, f"concept tokens {tokens} repeat a token")
    return list(tokens)


def check_scale(scale: Any, where: str) -> float:
    """A finite number with |scale| <= MAX_LORA_SCALE -> it as a float."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise _fail(where, f"lora_scale must be a number, got {_short(scale)}")
    if not math.isfinite(scale) or abs(scale) > MAX_LORA_SCALE:
        raise _fail(where, f"lora_scale {scale!r} is not a finite number in [-{MAX_LORA_SCALE:g}, "
                           f"{MAX_LORA_SCALE:g}]; it would wreck the base weights")
    return float(scale)


def check_metadata(meta: Mapping[str, Any], where: str) -> tuple[list[str], str, str, float]:
    """The safetensors metadata (all strings) -> (tokens, method, layout, lora_scale)."""
    if not isinstance(meta.get("tokens"), str):
        raise _fail(where, "no 'tokens' metadata; not a concept written by lcd")
    try:
        tokens = json.loads(meta["tokens"])
    except (ValueError, RecursionError):
        raise _fail(where, f"metadata 'tokens' is not JSON: {_short(meta['tokens'])}") from None
    method, layout = meta.get("method"), meta.get("layout", "full")
    if not isinstance(method, str) or not isinstance(layout, str):
        raise _fail(where, "no 'method' metadata; not a concept written by lcd")
    raw = meta.get("lora_scale", "1.0")
    try:
        scale = float(raw)
    except (TypeError, ValueError):
        raise _fail(where, f"lora_scale must be a number, got {_short(raw)}") from None
    return check_tokens(tokens, where), method, layout, check_scale(scale, where)


def check_family(family: Any, specs: Mapping[str, TensorSpec], where: str) -> str:
    """The family named in the metadata (absent: what the embeddings say; a concept written
    before SDXL has none and is 'sd15') must hold exactly that family's embedding tables."""
    from lcd.concepts.family import FAMILIES

    have = "sdxl" if "text_2.embeddings" in specs else "sd15"
    if family is None:
        return have
    if family not in FAMILIES:
        raise _fail(where, f"metadata 'family' {_short(family)} is not one of {', '.join(FAMILIES)}")
    if family != have:
        keys = ", ".join(FAMILIES[family].embedding_keys)
        raise _fail(where, f"an {family} concept needs embedding tensors {keys}; this file has "
                           f"{', '.join(k for k in specs if not k.startswith('unet.'))}")
    return family


def check_structure(tokens: list[str], method: str, layout: str, specs: Mapping[str, TensorSpec], where: str,
                    family: str | None = None) -> None:
    """Keys, dtypes, ranks and pairings of a concept's tensors (keyed as in the file:
    'text.embeddings', SDXL's 'text_2.embeddings', 'unet.<param>'); shapes against a base model
    come later."""
    from lcd.concepts.io import tensor_problem

    emb = specs.get("text.embeddings")
    if emb is None:
        raise _fail(where, "no text.embeddings tensor; not a concept written by lcd")
    check_family(family, specs, where)
    for k, s in specs.items():
        if k not in ("text.embeddings", "text_2.embeddings") and not k.startswith("unet."):
            raise _fail(where, f"unexpected tensor {k!r} (a concept holds text.embeddings, text_2.embeddings "
                               "(SDXL) and unet.* tensors)")
        if not s.floating:
            raise _fail(where, f"{k} has dtype {s.dtype}; concept weights must be floating point")
        if 0 in s.shape:
            raise _fail(where, f"{k} is empty (shape {s.shape})")
    for key in ("text.embeddings", "text_2.embeddings"):
        e = specs.get(key)
        if e is not None and (len(e.shape) != 2 or e.shape[0] != len(tokens)):
            raise _fail(where, f"{key} has shape {e.shape} but {len(tokens)} token(s) need "
                               f"({len(tokens)}, width): one row per token")
    unet = {k[len("unet."):]: s for k, s in specs.items() if k.startswith("unet.")}
    if problem := tensor_problem(method, layout, unet):
        raise _fail(where, problem)
    for key, s in unet.items():
        module, _, leaf = key.rpartition(".")
        if leaf in _PAIR:
            other = unet.get(f"{module}.{_PAIR[leaf]}")
            if other is None:
                raise _fail(where, f"unet.{key} has no unet.{module}.{_PAIR[leaf]}; a LoRA update needs both")
            if len(s.shape) != 2 or len(other.shape) != 2:
                raise _fail(where, f"unet.{module}: lora_A and lora_B must be 2-d, got {s.shape} and {other.shape}")
            a, b = (s, other) if leaf == "lora_A" else (other, s)
            if a.shape[0] != b.shape[1]:
                raise _fail(where, f"unet.{module}: lora_A has rank {a.shape[0]} but lora_B has rank {b.shape[1]}; "
                                   "the pair is from different trainings")
        elif method != "full" and len(s.shape) != {"weight": 2, "bias": 1}.get(leaf, len(s.shape)):
            raise _fail(where, f"unet.{key} has shape {s.shape}; a cross-attention {leaf} is "
                               f"{'2-d' if leaf == 'weight' else '1-d'}")


def check_values(tensors: Mapping[str, torch.Tensor], where: str) -> None:
    """Every value finite: NaN or inf weights paint the region black and would be recorded edited."""
    bad = sorted(k for k, v in tensors.items() if not bool(torch.isfinite(v.float()).all()))
    if bad:
        raise _fail(where, f"non-finite values (NaN or inf) in {', '.join(bad[:3])}"
                           f"{' and more' if len(bad) > 3 else ''}; retrain or re-export this concept")


def check_card(card: Mapping[str, Any], where: str) -> None:
    """The card fields readers use: class_words a list of strings, base {ref, sha256, revision}
    strings, config.template a string (read_card already checked the containers' kinds)."""
    words = card.get("class_words")
    if words is not None and not all(isinstance(w, str) for w in words):
        raise _fail(where, f"card field 'class_words' must be a list of words, got {_short(words)}")
    for k, v in (card.get("base") or {}).items():
        if k in ("ref", "sha256", "revision") and v is not None and not isinstance(v, str):
            raise _fail(where, f"card field 'base.{k}' must be a string, got {_short(v)}")
    config = card.get("config")
    if config is not None and not isinstance(config, dict):
        raise _fail(where, f"card field 'config' must be a JSON object, got {type(config).__name__}")
    if isinstance(config, dict) and config.get("template") is not None and not isinstance(config["template"], str):
        raise _fail(where, f"card field 'config.template' must be a string, got {_short(config['template'])}")


def check_concept(concept) -> None:
    """All file checks on a Concept in memory (built by training, merge, import or a caller)."""
    where = concept.name
    tokens = check_tokens(concept.tokens, where)
    check_scale(concept.lora_scale, where)
    if not isinstance(concept.unet, Mapping):
        raise _fail(where, f"UNet tensors must be a mapping, got {type(concept.unet).__name__}")
    tensors = {"text.embeddings": concept.embeddings} | {f"unet.{k}": v for k, v in concept.unet.items()}
    if getattr(concept, "embeddings_2", None) is not None:
        tensors["text_2.embeddings"] = concept.embeddings_2
    check_structure(tokens, concept.method, concept.layout, {k: TensorSpec.of_tensor(v) for k, v in tensors.items()},
                    where)
    check_values(tensors, where)
    if isinstance(concept.card, Mapping):
        check_card(concept.card, where)


def check_against_base(concept, unet, text_encoder, text_encoder_2=None) -> None:
    """The concept fits this base: it is of the base's family (SDXL: rows for both text
    encoders), each embedding width is its text encoder's hidden size, every UNet tensor matches
    its parameter (to_k/to_v: in = cross_attention_dim, 2048 for SDXL; out = the layer's
    channels), and the applied weights stay finite in the base's dtype (an fp16 model overflows
    at 65504)."""
    from lcd.concepts.io import check_unet_shapes

    where = concept.name
    rows = [concept.embeddings] + ([] if getattr(concept, "embeddings_2", None) is None else [concept.embeddings_2])
    encoders = [text_encoder] + ([] if text_encoder_2 is None else [text_encoder_2])
    if len(rows) != len(encoders):
        fam = {1: "SD1.5", 2: "SDXL"}
        raise _fail(where, f"the concept is for {fam.get(len(rows), '?')} ({len(rows)} text encoder(s)) but the "
                           f"base model is {fam.get(len(encoders), '?')} ({len(encoders)}); train it on this base")
    for k, (r, te) in enumerate(zip(rows, encoders)):
        d = te.get_input_embeddings().weight.shape[1]
        if r.shape[-1] != d:
            name = "token embeddings" if k == 0 else "second text encoder's token embeddings"
            raise _fail(where, f"{name} have width {r.shape[-1]} but the base text encoder has {d}; the "
                               "concept was trained on a different base model")
    params = check_unet_shapes(concept, unet)
    for m in concept.modules if concept.lowrank else concept.unet:
        if concept.lowrank:
            w = params[f"{m}.weight"]
            a, b = concept.unet[f"{m}.lora_A"], concept.unet[f"{m}.lora_B"]
            # |W + s B A| <= |W| + |s| r max|B| max|A|, elementwise: no delta of full size is built
            peak = (w.detach().abs().max().float().item()
                    + abs(concept.lora_scale) * a.shape[0] * b.abs().max().float().item() * a.abs().max().float().item())
        else:
            w = params[m]
            peak = concept.unet[m].abs().max().float().item()
        if w.is_floating_point() and not peak < torch.finfo(w.dtype).max:
            raise _fail(where, f"unet.{m}: the applied weights reach {peak:.3g}, past what the base's "
                               f"{str(w.dtype).removeprefix('torch.')} holds; the update would be inf")


def _short(v: Any) -> str:
    """`v` for a one-line message: its repr cut at 60 characters (a nested list too deep to repr
    is named by its type)."""
    try:
        r = repr(v)
    except RecursionError:
        return f"a deeply nested {type(v).__name__}"
    return r if len(r) <= 60 else r[:57] + "..."
