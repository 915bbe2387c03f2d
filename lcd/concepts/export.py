"""`export_concept`: write a concept in the layout of diffusers, kohya, LyCORIS 'full' or A1111,
with a manifest (MANIFEST_NAME) naming every file, its role and how each tool loads it.

Folder written under `out_dir` (file names are the constants below):
    diffusers     pytorch_custom_diffusion_weights.safetensors + <P>.safetensors per token (io.export_diffusers)
    kohya, a1111  lora/<name>.safetensors (kohya LoRA keys, one alpha) + embeddings/<TRIGGER>.safetensors
    lycoris-full  lora/<name>.safetensors (W - W0 as `.diff`) + embeddings/<TRIGGER>.safetensors
Every LoRA-style file adds the concept's own W - W0 at strength 1.0 in every reader (checked here
with the readers' arithmetic, `formats.reader_delta`, and stated in the manifest's `exact`/`note`).
Prompts in other tools use the trigger word (`tokens.trigger_word`, e.g. 'lcddogzqjwjqzx'), not
`[P]`: A1111 would fire an embedding named 'P' on every "p".
SDXL (lcd.concepts.family): kohya / LyCORIS keys in the LDM naming sd-scripts uses for SDXL,
ss_base_model_version 'sdxl_base_v1-0', and each embedding file holds 'clip_l' and 'clip_g'.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from lcd.concepts import formats
from lcd.concepts.deltas import kv_deltas
from lcd.concepts.family import Family, family_of_unet
from lcd.concepts.custom_diffusion import export_diffusers, token_file_name
from lcd.concepts.io import DIFFUSERS_WEIGHTS_NAME, Concept
from lcd.concepts.tokens import check_trigger, trigger_words
from lcd.errors import LcdError
from lcd.io.atomic import atomic_path, write_text_atomic

FORMATS = ("diffusers", "kohya", "lycoris-full", "a1111")
LORA_DIR, EMBEDDINGS_DIR = "lora", "embeddings"
MANIFEST_NAME = "lcd_export.json"
EXACT_RTOL = 1e-5  # max |reader's delta - ours| / max |ours| per layer above which an export is called inexact
LORA_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")  # no ':' (A1111's <lora:NAME:1> splits there)
NOTES = {
    "diffusers": "diffusers only (load_attn_procs + load_textual_inversion); ComfyUI, A1111 and kohya do not read "
                 "Custom Diffusion processor weights: export --format kohya for them",
    "kohya": "kohya LoRA read alike by diffusers, ComfyUI, A1111, sd-scripts and LyCORIS (one alpha for all layers)",
    "a1111": "A1111: the LoRA and the embedding together (prompt <lora:NAME:1> TRIGGER); also read by ComfyUI, "
             "diffusers and sd-scripts",
    "lycoris-full": "LyCORIS full diffs read by ComfyUI, A1111 and LyCORIS; diffusers' load_lora_weights does not "
                    "read .diff tensors: export --format kohya for diffusers",
}


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise LcdError(f"export: format {fmt!r} is not one of {', '.join(FORMATS)}", item=fmt)


def lora_name(concept: Concept, name: str | None) -> str:
    """The LoRA file stem: `name` as given (checked), else the concept folder's name made safe."""
    if name is not None:
        if not LORA_NAME.fullmatch(name):
            raise LcdError(f"export: --name {name!r} must be letters, digits, '_', '-' or '.' (at most 100, no "
                           "':' or '/': A1111's <lora:NAME:1> and file names need it plain)", item=name)
        return name
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(concept.name).name).strip("._-")[:100]
    return stem or "concept"


def _save(tensors: dict, path: Path, metadata: dict[str, str] | None = None) -> Path:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def _metadata(concept: Concept, fmt: str, fam: Family, ranks: list[int] | None = None,
              alpha: float | None = None) -> dict:
    """kohya-style `ss_*` keys A1111 shows (the base version tells SD1 from SDXL), plus our tokens and base pin."""
    base = concept.card.get("base") or {}
    meta = {"ss_base_model_version": fam.base_version, "lcd_format": fmt, "lcd_tokens": json.dumps(concept.tokens),
            "lcd_base": json.dumps({k: base.get(k) for k in ("ref", "sha256", "revision")})}
    if ranks:
        meta["ss_network_module"] = "networks.lora"
        meta["ss_network_dim"] = str(ranks[0]) if len(set(ranks)) == 1 else "Dynamic"
        meta["ss_network_alpha"] = repr(alpha)
    return meta


def concept_triggers(concept: Concept) -> dict[str, str]:
    """{token: trigger word}: fixed for a concept (its name, tokens and embedding bytes)."""
    salts = [row.detach().float().cpu().contiguous().numpy().tobytes() for row in concept.embeddings]
    return trigger_words(concept.name, concept.tokens, salts)


def _class_words(concept: Concept) -> list[str]:
    words = [w for w in (concept.card.get("class_words") or []) if isinstance(w, str)]
    return words + [""] * (len(concept.tokens) - len(words))


def _layer_error(sd: dict[str, torch.Tensor], deltas: dict[str, torch.Tensor], fmt: str, name) -> float:
    """Max over layers of max |what a reader adds - W - W0| / max |W - W0| (0 for untouched layers)."""
    worst = 0.0
    for m, d in deltas.items():
        n = name(m)
        theirs = sd[f"{n}.diff"].float() if fmt == "lycoris-full" else formats.reader_delta(sd, n)
        scale = float(d.abs().max())
        if scale > 0:
            worst = max(worst, float((theirs - d.float()).abs().max()) / scale)
    return worst


def diffusers_embedding_load(path: Path, word: str, fam: Family) -> str:
    """How diffusers loads one embedding file: SD1.5 by path; SDXL one call per encoder with its tensor."""
    if len(fam.encoders) == 1:
        return f'pipe.load_textual_inversion("{path.parent}", weight_name="{path.name}", token="{word}")'
    return "; ".join([f'state = safetensors.torch.load_file("{path}")'] + [
        f'pipe.load_textual_inversion(state["{key}"], token="{word}", text_encoder=pipe.{te}, tokenizer=pipe.{tok})'
        for key, (tok, te) in zip(fam.export_keys, fam.encoders)])


def _embedding_entries(concept: Concept, out: Path, words: dict[str, str], classes: list[str],
                       fam: Family) -> list[dict]:
    """Write embeddings/<TRIGGER>.safetensors per token (A1111 / ComfyUI layout) -> manifest entries."""
    entries = []
    for i, (tok, cls) in enumerate(zip(concept.tokens, classes)):
        w = words[tok]
        rel = f"{EMBEDDINGS_DIR}/{w}.safetensors"
        _save(formats.embedding_file([r[i] for r in concept.rows], fam.export_keys), out / rel)
        entries.append({"path": rel, "role": "embedding", "token": tok, "trigger": w, "class_word": cls, "load": {
            "diffusers": diffusers_embedding_load(out / rel, w, fam),
            "comfyui": f"models/embeddings/{w}.safetensors; prompt embedding:{w}",
            "a1111": f"embeddings/{w}.safetensors; prompt word {w}"}})
    return entries


def _lora_entry(rel: str, stem: str, fmt: str, out: Path) -> dict:
    load = {"comfyui": f"models/loras/{stem}.safetensors; LoraLoaderModelOnly, strength_model 1.0",
            "a1111": f"models/Lora/{stem}.safetensors; prompt <lora:{stem}:1>"}
    if fmt == "lycoris-full":
        load["diffusers"] = "not read by diffusers (load_lora_weights has no .diff support): export --format kohya"
    else:
        load["diffusers"] = f'pipe.load_lora_weights("{out / LORA_DIR}", weight_name="{stem}.safetensors")'
        load["kohya"] = f"networks/merge_lora.py --models {stem}.safetensors --ratios 1"
    role = "unet-diff" if fmt == "lycoris-full" else "unet-lora"
    return {"path": rel, "role": role, "load": load}


def _diffusers_entries(concept: Concept, out: Path, words: dict[str, str], classes: list[str],
                       fam: Family) -> list[dict]:
    entries = [{"path": DIFFUSERS_WEIGHTS_NAME, "role": "unet-kv-weights", "load": {
        "diffusers": f'pipe.unet.load_attn_procs("{out}", weight_name="{DIFFUSERS_WEIGHTS_NAME}", _pipeline=pipe)'}}]
    for tok, cls in zip(concept.tokens, classes):
        f, w = token_file_name(tok), words[tok]
        entries.append({"path": f, "role": "embedding", "token": tok, "trigger": w, "class_word": cls, "load": {
            "diffusers": diffusers_embedding_load(out / f, w, fam)}})
    return entries


def _prompts(fmt: str, stem: str | None, words: dict[str, str], classes: list[str]) -> dict[str, str]:
    """Prompt syntax per tool that uses every part written (`stem`: the LoRA file, if any), e.g.
    '<lora:dog:1> lcddg...qzx dog': add the scene around it."""
    subject = " and ".join(" ".join(x for x in (w, c) if x) for w, c in zip(words.values(), classes))
    if fmt == "diffusers":
        return {"diffusers": subject}
    comfy = " and ".join(" ".join(x for x in (f"embedding:{w}", c) if x) for w, c in zip(words.values(), classes))
    return {"a1111": f"<lora:{stem}:1> {subject}", "comfyui": comfy,
            **({} if fmt == "lycoris-full" else {"diffusers": subject})}


def export_concept(concept: Concept, unet, out_dir: str | Path, fmt: str, name: str | None = None,
                   tokenizer=None) -> dict:
    """Write `concept` (trained on `unet`'s weights) in `fmt` under `out_dir`, and MANIFEST_NAME
    beside it -> {'format', 'files': [every path written but the manifest], 'embeddings': {token:
    path}, 'trigger_words': {token: word}, 'prompt': {tool: prompt}, 'exact', 'note', 'manifest'}.
    `tokenizer` (the base model's) checks each trigger word splits into rare pieces."""
    # 1. check inputs, name the parts
    check_format(fmt)
    fam = family_of_unet(unet)
    if concept.family != fam.name:
        raise LcdError(f"{concept.name}: an {concept.family} concept cannot be exported against an {fam.name} "
                       "UNet; pass the base model it was trained on", item=concept.name)
    out = Path(out_dir)
    stem = lora_name(concept, name)
    words = concept_triggers(concept)
    if tokenizer is not None:
        for w in words.values():
            check_trigger(w, tokenizer, item=concept.name)
    classes = _class_words(concept)
    # 2. write the weights; measure what a reader would add against our W - W0
    exact, err = True, 0.0
    if fmt == "diffusers":
        export_diffusers(concept, unet, out)  # full replacement weights (float32): what diffusers installs
        entries = _diffusers_entries(concept, out, words, classes, fam)
    else:
        deltas = kv_deltas(concept, unet)
        lpb = unet.config.layers_per_block
        name = lambda m: fam.kohya_name(m, lpb if isinstance(lpb, int) else lpb[0])  # noqa: E731
        if fmt == "lycoris-full":
            sd, meta = formats.lycoris_full_state_dict(deltas, name=name), _metadata(concept, fmt, fam)
        else:
            factors = formats.lora_factors(concept, deltas)
            alpha = next(iter(factors.values()))[1] if factors else None
            sd = formats.kohya_state_dict(factors, name=name)
            meta = _metadata(concept, fmt, fam, [f.rank for f, _ in factors.values()], alpha)
        err = _layer_error(sd, deltas, fmt, name)
        exact = err <= EXACT_RTOL
        rel = f"{LORA_DIR}/{stem}.safetensors"
        _save(sd, out / rel, meta)
        entries = [_lora_entry(rel, stem, fmt, out)] + _embedding_entries(concept, out, words, classes, fam)
    # 3. the manifest: every file, its role, how each tool loads it, the prompt that uses them all
    note = NOTES[fmt].replace("NAME", stem).replace("TRIGGER", " ".join(words.values()))
    if not exact:
        note = f"NOT exact: a reader's K/V change differs from the concept's by up to {err:.2g} (relative); {note}"
    manifest = {"format": fmt, "concept": concept.name, "tokens": concept.tokens, "trigger_words": words,
                "class_words": dict(zip(concept.tokens, classes)), "exact": exact, "max_relative_error": err,
                "note": note, "files": entries, "prompt": _prompts(fmt, None if fmt == "diffusers" else stem, words, classes),
                "base": {k: (concept.card.get("base") or {}).get(k) for k in ("ref", "sha256", "revision")}}
    write_text_atomic(out / MANIFEST_NAME, json.dumps(manifest, indent=2))
    emb = {e["token"]: str(out / e["path"]) for e in entries if e["role"] == "embedding"}
    return {"format": fmt, "files": [str(out / e["path"]) for e in entries], "embeddings": emb, "trigger_words": words,
            "prompt": manifest["prompt"], "exact": exact, "note": note, "manifest": str(out / MANIFEST_NAME)}
