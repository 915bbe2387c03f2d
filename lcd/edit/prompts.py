"""Text embeddings computed once per distinct prompt: a shard repeats prompts (one concept, a few
templates) and always the same negative prompt, so the text encoders run once for each.

A cache belongs to one loaded pipeline with its concepts applied (the tokens' embeddings are part
of the text encoders); make a new one when the model or concepts change. `PromptCache.of(pipe)`
encodes as the pipeline's family does (lcd.concepts.family): SD1.5 the last hidden state of its
one CLIP encoder; SDXL the penultimate hidden states of CLIP ViT-L and OpenCLIP bigG concatenated,
plus bigG's pooled projection, which the UNet takes with the time ids (`added_conditioning`).
"""

from __future__ import annotations

from typing import Sequence

import torch

from lcd.edit.sampler import encode_prompts

Row = tuple[torch.Tensor, "torch.Tensor | None"]  # (context (77, D), pooled (P,) or None)


class PromptCache:
    """prompt -> (context (77, D), pooled (P,) or None) on the text encoders' device.

    `encode(prompts)` -> context (B, 77, D); `encode_pooled(prompts)` -> (context, pooled (B, P)
    or None). Unseen prompts are encoded together in one call, then every row is served from the
    cache. Embeddings do not depend on which prompts share a call (each row is padded to 77 tokens
    and attends only within itself), so cached and uncached edits agree within float rounding.
    `PromptCache(tokenizer, text_encoder)` is the SD1.5 form (one encoder, no pooled output)."""

    def __init__(self, tokenizer=None, text_encoder=None, max_entries: int = 4096, *, pipe=None):
        self.tokenizer, self.text_encoder, self.pipe = tokenizer, text_encoder, pipe
        self.max_entries = max_entries
        self._cache: dict[str, Row] = {}
        self.encoded = 0  # prompts actually run through the text encoders (tests, logs)
        # diffusers' SDXL pipelines: no negative prompt -> zero context and pooled (SDXL base: true)
        self.zeros_for_empty = bool(getattr(pipe, "text_encoder_2", None) is not None
                                    and getattr(getattr(pipe, "config", None), "force_zeros_for_empty_prompt", False))

    @classmethod
    def of(cls, pipe, max_entries: int = 4096) -> "PromptCache":
        """The cache for `pipe`, encoding as its family does."""
        if getattr(pipe, "text_encoder_2", None) is None:
            return cls(pipe.tokenizer, pipe.text_encoder, max_entries, pipe=pipe)
        return cls(max_entries=max_entries, pipe=pipe)

    def fits(self, pipe) -> bool:
        """True when this cache encodes with `pipe`'s encoders (an SD1.5-form cache never fits SDXL)."""
        if getattr(pipe, "text_encoder_2", None) is not None:
            return self.pipe is pipe
        return self.text_encoder is pipe.text_encoder

    def _encode_new(self, prompts: list[str]) -> list[Row]:
        if self.pipe is not None and getattr(self.pipe, "text_encoder_2", None) is not None:
            from lcd.concepts.family import encode_prompts as family_encode

            c = family_encode(self.pipe, prompts)
            return list(zip(c.context, c.pooled))
        return [(e, None) for e in encode_prompts(self.tokenizer, self.text_encoder, prompts)]

    def encode_pooled(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        new = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        if new:
            if len(self._cache) + len(new) > self.max_entries:
                self._cache.clear()  # bounded memory for shards of all-distinct prompts
                new = list(dict.fromkeys(prompts))
            with torch.no_grad():
                rows = self._encode_new(new)
            self._cache.update(zip(new, rows))
            self.encoded += len(new)
        rows = [self._cache[p] for p in prompts]
        context = torch.stack([r[0] for r in rows])
        pooled = torch.stack([r[1] for r in rows]) if rows and rows[0][1] is not None else None
        return context, pooled

    def encode(self, prompts: Sequence[str]) -> torch.Tensor:
        return self.encode_pooled(prompts)[0]

    def negative(self, prompt: str, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The unconditional branch for `n` items: `prompt` encoded, or for an empty prompt on an
        SDXL model that asks for it (force_zeros_for_empty_prompt) zeros of the same shapes, as
        diffusers' SDXL pipelines make them when given no negative prompt."""
        context, pooled = self.encode_pooled([prompt])
        if prompt == "" and self.zeros_for_empty:
            context, pooled = torch.zeros_like(context), torch.zeros_like(pooled)
        return context.expand(n, -1, -1), None if pooled is None else pooled.expand(n, -1)


def added_conditioning(pipe, pooled: torch.Tensor | None, uncond_pooled: torch.Tensor | None, size: int,
                       dtype: torch.dtype) -> dict[str, torch.Tensor] | None:
    """SDXL's `added_cond_kwargs` for a guided batch [uncond; cond] of B items at working size
    `size`: text_embeds (2B, P) and time_ids (2B, 6) = original (S, S), crop top-left (0, 0),
    target (S, S), as diffusers' SDXL pipelines pass them for an S x S image. A model that
    `requires_aesthetics_score` (SDXL's refiner layout) takes (S, S, 0, 0, score) instead, with
    diffusers' default scores 6.0 and 2.5 for the negative. None for SD1.5 (no pooled output)."""
    if pooled is None:
        return None
    b = pooled.shape[0]
    if getattr(pipe.config, "requires_aesthetics_score", False):
        pos, neg = [size, size, 0, 0, 6.0], [size, size, 0, 0, 2.5]
    else:
        pos = neg = [size, size, 0, 0, size, size]
    ids = torch.tensor([neg] * b + [pos] * b, dtype=dtype, device=pooled.device)
    return {"text_embeds": torch.cat([uncond_pooled, pooled]).to(dtype), "time_ids": ids}
