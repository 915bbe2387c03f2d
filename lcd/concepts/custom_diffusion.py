"""diffusers' Custom Diffusion layout: export a concept to the files stock diffusers loads
(`pytorch_custom_diffusion_weights.safetensors` through `load_attn_procs(..., _pipeline=pipe)` and
one textual-inversion file per token), and import weights trained by diffusers'
`examples/custom_diffusion/train_custom_diffusion.py` as a concept.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

import torch

from lcd.concepts.io import (DIFFUSERS_WEIGHTS_NAME, DIFFUSERS_WEIGHTS_NAME_BIN, Concept, _one_line,
                             check_unet_shapes)
from lcd.concepts.tokens import CONCEPT_TOKEN
from lcd.errors import ModelLoadError
from lcd.io.atomic import atomic_path

_TO_DIFFUSERS = {"to_k.weight": "to_k_custom_diffusion.weight", "to_v.weight": "to_v_custom_diffusion.weight",
                 "to_q.weight": "to_q_custom_diffusion.weight", "to_out.0.weight": "to_out_custom_diffusion.0.weight",
                 "to_out.0.bias": "to_out_custom_diffusion.0.bias"}
_FROM_DIFFUSERS = {v: k for k, v in _TO_DIFFUSERS.items()}


def token_file_name(token: str) -> str:
    return f"{token.strip('[]')}.safetensors"


def export_diffusers(concept: Concept, unet, out_dir: str | Path) -> Path:
    """Write the files stock diffusers loads:
        pipe.unet.load_attn_procs(dir, weight_name=DIFFUSERS_WEIGHTS_NAME, _pipeline=pipe)
        pipe.load_textual_inversion(dir, weight_name=token_file_name(tok), token=tok)  # per token
    Every attention processor gets an entry (zero-length tensors for untouched ones) so diffusers
    builds a complete processor map. Pass `_pipeline`: without it diffusers 0.39 builds the
    processors and silently never installs them (diffusers #9320). LoRA and compressed deltas
    are merged into K/V. An SDXL concept's token file holds 'clip_l' and 'clip_g' (one row set
    per text encoder, the layout A1111 and ComfyUI read); diffusers loads each with
    load_textual_inversion(state[key], token=..., text_encoder=..., tokenizer=...).
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    check_unet_shapes(concept, unet)
    base = dict(unet.named_parameters())
    weights = dict(concept.unet)
    if concept.lowrank:
        weights = {}
        for m in concept.modules:
            d = concept.lora_scale * (concept.unet[f"{m}.lora_B"].float() @ concept.unet[f"{m}.lora_A"].float())
            weights[f"{m}.weight"] = base[f"{m}.weight"].detach().float().cpu() + d
    state: dict[str, torch.Tensor] = {}
    for proc in unet.attn_processors:  # '<module path>.processor'
        mod = proc[: -len(".processor")]
        got = {suf: weights[f"{mod}.{suf}"] for suf in _TO_DIFFUSERS if f"{mod}.{suf}" in weights}
        if not got:
            state[proc] = torch.zeros(0)
            continue
        if "to_k.weight" not in got or "to_v.weight" not in got:
            raise ModelLoadError(f"{concept.name}: {mod}: diffusers needs both to_k and to_v", item=concept.name)
        if "to_q.weight" in got:  # train_q_out: diffusers needs q and out, taken from the base when untouched
            for suf in ("to_q.weight", "to_out.0.weight", "to_out.0.bias"):
                got.setdefault(suf, base[f"{mod}.{suf}"].detach())
        for suf, t in got.items():
            state[f"{proc}.{_TO_DIFFUSERS[suf]}"] = t.detach().float().cpu().contiguous()
    with atomic_path(out / DIFFUSERS_WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp))
    from lcd.concepts.family import family_named
    from lcd.concepts.formats import embedding_file

    keys = family_named(concept.family).export_keys
    for i, tok in enumerate(concept.tokens):
        rows = {tok: concept.embeddings[i].detach().float().cpu().contiguous()} if concept.embeddings_2 is None \
            else embedding_file([r[i] for r in concept.rows], keys)
        with atomic_path(out / token_file_name(tok)) as tmp:
            save_file(rows, str(tmp))
    return out


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    import warnings

    with warnings.catch_warnings():  # torch's unpickler warns on stderr about files it then refuses
        warnings.simplefilter("ignore")
        return torch.load(str(path), map_location="cpu", weights_only=True)


def import_diffusers(folder: str | Path, card: dict[str, Any] | None = None,
                     tokens: Sequence[str] | None = None) -> Concept:
    """Read weights trained by diffusers' `examples/custom_diffusion/train_custom_diffusion.py`
    (`pytorch_custom_diffusion_weights.{safetensors,bin}` + one `<token>.{safetensors,bin}` per
    modifier token holding {token: (D,)}) into a Concept.

    diffusers' tokens look like `<new1>`; ours must look like `[NAME]`, so `<new1>` becomes
    `[new1]` unless `tokens` names them (in the sorted order of the embedding files)."""
    p = Path(folder)
    wf = next((p / n for n in (DIFFUSERS_WEIGHTS_NAME, DIFFUSERS_WEIGHTS_NAME_BIN) if (p / n).exists()), None)
    if wf is None:
        raise ModelLoadError(f"{p}: no {DIFFUSERS_WEIGHTS_NAME} or {DIFFUSERS_WEIGHTS_NAME_BIN}", item=str(p))
    try:
        state = _read_tensors(wf)
    except Exception as e:
        raise ModelLoadError(f"{wf}: cannot read: {_one_line(e)}", item=str(wf)) from None
    if not isinstance(state, dict):
        raise ModelLoadError(f"{wf}: holds a {type(state).__name__}, not a dict of tensors", item=str(wf))
    unet: dict[str, torch.Tensor] = {}
    for k, t in state.items():
        if not isinstance(t, torch.Tensor) or t.numel() == 0:
            continue  # untouched processor
        proc, _, sub = k.partition(".processor.")
        if sub not in _FROM_DIFFUSERS:
            raise ModelLoadError(f"{wf}: unexpected key {k} (not a Custom Diffusion weight)", item=str(wf))
        if not t.is_floating_point():
            raise ModelLoadError(f"{wf}: {k} has dtype {str(t.dtype).removeprefix('torch.')}; weights must be "
                                 "floating point", item=str(wf))
        unet[f"{proc}.{_FROM_DIFFUSERS[sub]}"] = t.float()
    if not unet:
        raise ModelLoadError(f"{wf}: holds no Custom Diffusion K/V weights", item=str(wf))
    names, rows = _token_rows(p, wf)
    if tokens is not None:
        if len(tokens) != len(rows):
            raise ModelLoadError(f"{p}: {len(rows)} token file(s) but {len(tokens)} token name(s) given", item=str(p))
        tokens = list(tokens)
    else:
        tokens = [t if CONCEPT_TOKEN.fullmatch(t) else f"[{re.sub(r'[^A-Za-z0-9_-]', '', t) or 'P'}]" for t in names]
    method = "crossattn" if any(k.endswith("to_q.weight") for k in unet) else "kv"
    meta = dict(card or {}, imported_from=str(p), source_format="diffusers custom_diffusion")
    concept = Concept(tokens, torch.stack(rows), method, unet, 1.0, meta, str(p))
    from lcd.concepts.validate import check_concept

    check_concept(concept)  # what load_concept would refuse is not written
    return concept


def _token_rows(p: Path, wf: Path) -> tuple[list[str], list[torch.Tensor]]:
    """The token embedding files beside `wf` (sorted) -> (their tokens, their rows (D,) float32),
    all of one width."""
    names, rows = [], []
    for f in sorted(p.iterdir()):
        if f == wf or f.suffix not in (".safetensors", ".bin") or f.name.startswith("pytorch_"):
            continue
        try:
            sd = _read_tensors(f)
        except Exception as e:  # corrupt, truncated, or a pickle that is not a tensor dict
            raise ModelLoadError(f"{f}: cannot read the token embedding file: {_one_line(e)}", item=str(f)) from None
        if not isinstance(sd, dict) or len(sd) != 1:
            raise ModelLoadError(f"{f}: a token embedding file must hold one entry, found "
                                 f"{len(sd) if isinstance(sd, dict) else type(sd).__name__}", item=str(f))
        (tok, row), = sd.items()
        if not isinstance(row, torch.Tensor) or not row.is_floating_point() or row.numel() == 0:
            raise ModelLoadError(f"{f}: the entry {tok!r} must be a non-empty float tensor (one token's embedding)",
                                 item=str(f))
        names.append(tok)
        rows.append(row.float().reshape(-1))
    if not names:
        raise ModelLoadError(f"{p}: no token embedding file (<token>.safetensors or .bin) beside {wf.name}", item=str(p))
    if len({r.numel() for r in rows}) > 1:
        raise ModelLoadError(f"{p}: the token embedding files hold rows of different widths "
                             f"({sorted({r.numel() for r in rows})}); they are from different models", item=str(p))
    return names, rows
