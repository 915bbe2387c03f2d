"""Text embeddings computed once per distinct prompt: a shard repeats prompts (one concept, a few
templates) and always the same negative prompt, so the text encoder runs once for each.

A cache belongs to one loaded pipeline with its concepts applied (the tokens' embeddings are part
of the text encoder); make a new one when the model or concepts change.
"""

from __future__ import annotations

from typing import Sequence

import torch

from lcd.edit.sampler import encode_prompts


class PromptCache:
    """prompt -> CLIP last hidden states (77, D) on the text encoder's device.

    `encode(prompts)` -> (B, 77, D): unseen prompts are encoded together in one call, then every
    row is served from the cache. Embeddings do not depend on which prompts share a call (each
    row is padded to 77 tokens and attends only within itself), so cached and uncached edits agree
    within float rounding."""

    def __init__(self, tokenizer, text_encoder, max_entries: int = 4096):
        self.tokenizer, self.text_encoder = tokenizer, text_encoder
        self.max_entries = max_entries
        self._cache: dict[str, torch.Tensor] = {}
        self.encoded = 0  # prompts actually run through the text encoder (tests, logs)

    def encode(self, prompts: Sequence[str]) -> torch.Tensor:
        new = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        if new:
            if len(self._cache) + len(new) > self.max_entries:
                self._cache.clear()  # bounded memory for shards of all-distinct prompts
                new = list(dict.fromkeys(prompts))
            with torch.no_grad():
                emb = encode_prompts(self.tokenizer, self.text_encoder, new)
            self._cache.update(zip(new, emb))
            self.encoded += len(new)
        return torch.stack([self._cache[p] for p in prompts])
