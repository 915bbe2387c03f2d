"""Low-rank K/V concepts: the change W - W0 of each layer as a truncated SVD, stored as such.

Custom Diffusion's K/V updates are close to low rank; keeping the top singular directions of
each layer's delta shrinks a concept ~5x (the paper's 75 MB -> 15 MB) at a small output change.
A compressed concept stores per layer `lora_A` (r, in) and `lora_B` (out, r) with
lora_B @ lora_A = U_r S_r V_r^T (the singular values split evenly, sqrt(S) on each side, so both
factors stay in the same range), `layout='lowrank'` and `lora_scale=1`: `apply_concepts` then
adds exactly the stored product to the base weight, as it does for a trained LoRA.

`energy` is the fraction of the delta's squared Frobenius norm kept: sum(s[:r]^2) / sum(s^2).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from lcd.concepts.deltas import kv_deltas
from lcd.concepts.io import Concept
from lcd.errors import LcdError


@dataclass(frozen=True)
class Factors:
    """One layer's delta ~= up @ down. up (out, r), down (r, in) float32; energy in [0, 1]."""

    up: torch.Tensor
    down: torch.Tensor
    energy: float

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])


def check_target(rank: int | None, energy: float | None, item: str = "compress") -> None:
    """Exactly one of `rank` (>= 1) or `energy` (0 < energy <= 1) must be given."""
    if (rank is None) == (energy is None):
        raise LcdError(f"{item}: give exactly one of rank or energy (got rank={rank}, energy={energy})", item=item)
    if rank is not None and (not isinstance(rank, int) or rank < 1):
        raise LcdError(f"{item}: rank must be an integer >= 1, got {rank!r}", item=item)
    if energy is not None and not 0.0 < energy <= 1.0:
        raise LcdError(f"{item}: energy must be in (0, 1], got {energy!r}", item=item)


def rank_for_energy(s: torch.Tensor, energy: float) -> int:
    """Smallest r with sum(s[:r]^2) >= energy * sum(s^2); s (k,) descending. 0 for a zero delta."""
    e = s.double() ** 2
    total = float(e.sum())
    if total == 0.0:
        return 0
    cum = torch.cumsum(e, 0) / total
    # 1e-12: a rounding shortfall must not add a whole singular direction
    return int(torch.searchsorted(cum, torch.tensor(energy - 1e-12, dtype=cum.dtype)).item()) + 1


def factorize(delta: torch.Tensor, rank: int | None = None, energy: float | None = None,
              item: str = "delta") -> Factors:
    """Truncated SVD of `delta` (out, in), computed in float64, to `rank` or to kept `energy`.

    Raises LcdError naming `item` when `rank` exceeds min(out, in), the layer's own rank bound."""
    check_target(rank, energy, item)
    full = min(delta.shape)
    if rank is not None and rank > full:
        raise LcdError(f"{item}: rank {rank} is above this layer's rank {full} (shape {tuple(delta.shape)})", item=item)
    u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)
    r = rank if rank is not None else rank_for_energy(s, energy)
    total = float((s ** 2).sum())
    kept = float((s[:r] ** 2).sum()) / total if total > 0 else 1.0
    root = s[:r].sqrt()
    return Factors(up=(u[:, :r] * root).float().contiguous(), down=(root[:, None] * vh[:r]).float().contiguous(),
                   energy=kept)


def factorize_all(deltas: dict[str, torch.Tensor], rank: int | None = None, energy: float | None = None,
                  item: str = "concept") -> dict[str, Factors]:
    """`factorize` every layer of {module: delta (out, in)}; errors name '<item>: <module>'."""
    check_target(rank, energy, item)
    return {m: factorize(d, rank, energy, item=f"{item}: {m}") for m, d in sorted(deltas.items())}


def summary(factors: dict[str, Factors], deltas: dict[str, torch.Tensor], rank: int | None,
            energy: float | None) -> dict:
    """The card's 'compression' record: asked rank/energy, per-layer ranks and energy, totals."""
    norms = {m: float(deltas[m].double().pow(2).sum()) for m in factors}
    total = sum(norms.values())
    kept = sum(f.energy * norms[m] for m, f in factors.items())
    ranks = {m: f.rank for m, f in factors.items()}
    return {"rank": rank, "energy": energy, "ranks": ranks,
            "energy_per_layer": {m: round(f.energy, 6) for m, f in factors.items()},
            "energy_kept": kept / total if total > 0 else 1.0,
            "min_rank": min(ranks.values(), default=0), "max_rank": max(ranks.values(), default=0)}


def compress_concept(concept: Concept, unet, rank: int | None = None, energy: float | None = None) -> Concept:
    """A new concept whose K/V change is the rank-`rank` (or `energy`-keeping) SVD of `concept`'s,
    relative to `unet`'s weights (the base the concept was trained on). Tokens and embeddings are
    kept; the card gains 'compression' (see `summary`). The input concept is not changed."""
    check_target(rank, energy, concept.name)
    deltas = kv_deltas(concept, unet)
    factors = factorize_all(deltas, rank, energy, item=concept.name)
    tensors: dict[str, torch.Tensor] = {}
    for m, f in factors.items():
        if f.rank == 0:  # an untouched layer: nothing to add
            continue
        tensors[f"{m}.lora_A"], tensors[f"{m}.lora_B"] = f.down, f.up
    card = dict(concept.card, compression=dict(summary(factors, deltas, rank, energy),
                                               source={"name": concept.name, "layout": concept.layout}))
    return replace(concept, unet=tensors, lora_scale=1.0, card=card, layout="lowrank")
