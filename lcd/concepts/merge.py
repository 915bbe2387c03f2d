"""Merge separately trained K/V concepts into one, in closed form (Custom Diffusion, Kumari et al.
2023, Sec. 3.3 "Constrained optimization to merge concepts"), reimplemented from the equations.

For every cross-attention `to_k` / `to_v` with base weight W0 (out, in):

    minimise  ||W C_reg^T - W0 C_reg^T||_F   subject to   W C^T = V

C (s, in)      text features of every concept's prompts (what attn2's K/V read: SD1.5's 768-wide
               last hidden state, SDXL's 2048-wide concatenation of both encoders' penultimate
               states, lcd.concepts.family.encode_prompts), at the positions that depend on
               the concept's token: from the token through the end-of-text token. CLIP's text
               encoder is causal, so earlier positions ("a photo of") are the same for every
               prompt that starts that way; they belong to the regularization side.
V (out, s)     each concept's own fine-tuned W_i applied to its rows of C.
C_reg (m, in)  features of a caption set (all 77 positions, what the UNet attends to).

With M = C_reg^T C_reg and R = V - W0 C^T = [(W_i - W0) C_i^T]_i, Lagrange multipliers give
    W = W0 + R (C M^-1 C^T)^-1 C M^-1.
The operator A = (C M^-1 C^T)^-1 C M^-1 (s, in) is shared by all layers (the text features are
the same for every layer), so it is solved once, in float64. A relative ridge of 1e-6 on M keeps
it invertible with few captions; it changes the objective only, never the constraints.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import torch

from lcd.concepts.deltas import check_kv_concept, kv_deltas
from lcd.concepts.family import encode_prompts, family_of
from lcd.concepts.io import Concept, add_tokens
from lcd.concepts.tokens import CONCEPT_TOKEN
from lcd.errors import LcdError, ModelLoadError, PromptError

# prompts per token whose features are held fixed ({token}, {class_word}); the concept's own
# training template is always added first
DEFAULT_TEMPLATES = (
    "{token} {class_word}",
    "a photo of {token} {class_word}",
    "a photo of {token} {class_word} on the beach",
    "a painting of {token} {class_word}",
    "{token} {class_word} in the jungle",
)
RIDGE = 1e-6
MAX_COND = 1e12  # beyond this the constraints are numerically dependent


# --- the math (tensors only) -------------------------------------------------------------------

def merge_operator(c: torch.Tensor, m: torch.Tensor, ridge: float = RIDGE) -> torch.Tensor:
    """A (s, in) float64 such that Delta = R @ A minimises ||Delta C_reg^T|| subject to
    Delta C^T = R. c: constraint features (s, in); m: C_reg^T C_reg (in, in)."""
    c, m = c.double(), m.double()
    n = m.shape[0]
    if c.shape[0] >= n:
        raise LcdError(f"merge: {c.shape[0]} constraint features for a {n}-wide text space; "
                       "use fewer prompts (templates) or fewer concepts", item="merge")
    m = m + ridge * (torch.trace(m) / n) * torch.eye(n, dtype=m.dtype)
    mic = torch.linalg.solve(m, c.T)  # M^-1 C^T (in, s)
    g = c @ mic  # C M^-1 C^T (s, s), symmetric positive definite when C has full row rank
    cond = float(torch.linalg.cond(g))
    if not cond < MAX_COND:
        raise LcdError(f"merge: the concepts' prompt features are (nearly) linearly dependent (condition "
                       f"number {cond:.3g}); use fewer or more varied prompts", item="merge")
    return torch.linalg.solve(g, mic.T)  # G^-1 C M^-1 (M, G symmetric)


def merged_weight(w0: torch.Tensor, residual: torch.Tensor, op: torch.Tensor) -> torch.Tensor:
    """W0 (out, in) + R (out, s) @ A (s, in), in float64, returned float32."""
    return (w0.double() + residual.double() @ op).float()


# --- features from the text encoder ------------------------------------------------------------

@torch.no_grad()
def encode_texts(pipe, texts: Sequence[str], batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (ids (n, L) long, features (n, L, D) float32 on CPU): the UNet's text context, as the
    pipeline conditions it (L = tokenizer.model_max_length; ids of the first tokenizer)."""
    ids, feats = [], []
    for i in range(0, len(texts), batch_size):
        cond = encode_prompts(pipe, list(texts[i:i + batch_size]))
        ids.append(cond.ids.cpu())
        feats.append(cond.context.float().cpu())
    return torch.cat(ids), torch.cat(feats)


def caption_gram(pipe, captions: Sequence[str], batch_size: int = 32) -> torch.Tensor:
    """C_reg^T C_reg (D, D) float64 over all positions of every caption, accumulated by batch."""
    if not captions:
        raise LcdError("merge: the regularization caption set is empty", item="merge")
    m = None
    for i in range(0, len(captions), batch_size):
        _, f = encode_texts(pipe, captions[i:i + batch_size], batch_size)
        f = f.reshape(-1, f.shape[-1]).double()
        m = f.T @ f if m is None else m + f.T @ f
    return m


def token_positions(ids: torch.Tensor, token_ids: Sequence[int], eos_id: int) -> list[int]:
    """Positions in one prompt's ids (L,) from its first concept token through the first
    end-of-text after it (both included)."""
    row = ids.tolist()
    start = next((i for i, t in enumerate(row) if t in set(token_ids)), None)
    if start is None:
        return []
    end = next((i for i in range(start, len(row)) if row[i] == eos_id), len(row) - 1)
    return list(range(start, end + 1))


def concept_prompts(concept: Concept, templates: Sequence[str]) -> list[str]:
    """Every template filled with each of the concept's tokens and class words (own template first)."""
    words = list(concept.card.get("class_words") or [])
    own = (concept.card.get("config") or {}).get("template")
    out: list[str] = []
    for i, tok in enumerate(concept.tokens):
        word = words[i] if i < len(words) else ""
        for t in ([own] if own else []) + list(templates):
            p = " ".join(t.format(token=tok, class_word=word).split())
            if p not in out:
                out.append(p)
    return out


def constraint_features(pipe, concept: Concept, templates: Sequence[str]) -> torch.Tensor:
    """C_i (k, D) float32: the features of `concept`'s prompts at its token-dependent positions.
    The concept's tokens must already be in `pipe`'s tokenizer."""
    prompts = concept_prompts(concept, templates)
    ids, feats = encode_texts(pipe, prompts)
    tok_ids = pipe.tokenizer.convert_tokens_to_ids(concept.tokens)
    rows = [feats[j, token_positions(ids[j], tok_ids, pipe.tokenizer.eos_token_id)] for j in range(len(prompts))]
    rows = [r for r in rows if len(r)]
    if not rows:
        raise PromptError(f"{concept.name}: no prompt contains its token(s) {concept.tokens}; check the templates",
                          item=concept.name)
    # prompts that share a prefix through the token ("a photo of [P] dog" and "... dog on the beach")
    # give the same rows there (the encoder is causal): one constraint each, or G is singular
    out = torch.cat(rows)
    keep = [i for i in range(len(out)) if not any(torch.equal(out[i], out[j]) for j in range(i))]
    return out[keep]


# --- concepts ----------------------------------------------------------------------------------

def _pin(c: Concept) -> tuple[str | None, str | None]:
    base = c.card.get("base") or {}
    return base.get("sha256") or base.get("revision"), base.get("ref")


def rename_tokens(concepts: Sequence[Concept], names: Sequence[str]) -> list[Concept]:
    """New concepts whose tokens are `names`, one per token of `concepts` in order (embeddings
    unchanged: a token's meaning is its embedding row, not its spelling)."""
    total = sum(len(c.tokens) for c in concepts)
    if len(names) != total:
        raise PromptError(f"merge: {len(names)} token name(s) given for {total} token(s) of the inputs", item="merge")
    for n in names:
        if not CONCEPT_TOKEN.fullmatch(n):
            raise PromptError(f"merge: token {n!r} must look like [NAME] (letters, digits, _ or -)", item=n)
    out, i = [], 0
    for c in concepts:
        out.append(replace(c, tokens=list(names[i:i + len(c.tokens)])))
        i += len(c.tokens)
    return out


def check_mergeable(concepts: Sequence[Concept]) -> None:
    """At least two K/V or LoRA concepts, trained on one base, defining distinct tokens."""
    if len(concepts) < 2:
        raise LcdError(f"merge: needs at least two concepts, got {len(concepts)}", item="merge")
    owner: dict[str, str] = {}
    for c in concepts:
        check_kv_concept(c)
        for t in c.tokens:
            if t in owner:
                raise PromptError(f"merge: token {t} is defined by both {owner[t]} and {c.name}; "
                                  "rename one (--token)", item=c.name)
            owner[t] = c.name
    pinned = [(c, *_pin(c)) for c in concepts if _pin(c)[0]]
    for c, pin, ref in pinned[1:]:
        c0, pin0, ref0 = pinned[0]
        if pin != pin0:
            raise ModelLoadError(f"merge: {c0.name} was trained on {ref0} ({pin0[:12]}) but {c.name} on {ref} "
                                 f"({pin[:12]}); only concepts of the same base model can be merged", item=c.name)


def merge_concepts(pipe, concepts: Sequence[Concept], reg_captions: Sequence[str], *,
                   templates: Sequence[str] = DEFAULT_TEMPLATES, ridge: float = RIDGE,
                   reg_source: str = "") -> Concept:
    """One 'kv' concept holding every concept's tokens (embeddings kept) and merged K/V weights.

    `pipe` is the plain base pipeline the concepts were trained on: its tokenizer and text
    encoder gain the concepts' tokens (as `apply_concepts` would add them), its UNet is only read.
    """
    # 1. check inputs, 2. tokens into the text encoder (features of each concept's own prompts)
    from lcd.concepts.validate import check_against_base

    check_mergeable(concepts)
    for c in concepts:  # each of the base's family (SDXL: rows for both encoders) and shapes
        check_against_base(c, pipe.unet, pipe.text_encoder, getattr(pipe, "text_encoder_2", None))
    deltas = [kv_deltas(c, pipe.unet) for c in concepts]
    for c in concepts:
        for (tok, te), rows in zip(family_of(pipe).text_encoders(pipe), c.rows):
            add_tokens(tok, te, c.tokens, rows, c.name)
    # 3. constraint and regularization features, 4. the shared operator
    cs = [constraint_features(pipe, c, templates) for c in concepts]
    op = merge_operator(torch.cat(cs), caption_gram(pipe, reg_captions), ridge)
    # 5. per layer: R = [(W_i - W0) C_i^T]_i, W = W0 + R A
    params = dict(pipe.unet.named_parameters())
    unet: dict[str, torch.Tensor] = {}
    for mod in sorted(set().union(*deltas)):
        w0 = params[f"{mod}.weight"].detach().float().cpu()
        res = torch.cat([(d[mod].double() @ c.double().T) if mod in d else torch.zeros(w0.shape[0], len(c), dtype=torch.float64)
                         for d, c in zip(deltas, cs)], dim=1)
        unet[f"{mod}.weight"] = merged_weight(w0, res, op)
    rows_2 = None if family_of(pipe).name == "sd15" else torch.cat([c.embeddings_2.float() for c in concepts])
    return Concept([t for c in concepts for t in c.tokens], torch.cat([c.embeddings.float() for c in concepts]),
                   "kv", unet, 1.0, _card(concepts, cs, len(reg_captions), templates, ridge, reg_source), "merged",
                   embeddings_2=rows_2)


def _card(concepts, cs, n_reg: int, templates, ridge: float, reg_source: str) -> dict:
    first = concepts[0].card
    return {
        "base": first.get("base", {}),
        "class_words": [w for c in concepts for w in (c.card.get("class_words") or [""] * len(c.tokens))],
        "merged_from": [{"name": c.name, "tokens": c.tokens, "method": c.method, "layout": c.layout,
                         "steps": c.card.get("steps"), "constraint_features": len(f)} for c, f in zip(concepts, cs)],
        "merge": {"templates": list(templates), "reg_captions": n_reg, "reg_source": reg_source, "ridge": ridge},
        "config": {},
    }
