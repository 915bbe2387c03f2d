"""CLIP and DINO feature extraction: images / prompts -> embedding arrays for `lcd.evaluate.metrics`.

Models come through lcd's loader only (`load_clip`, `load_dino`), so a real id in params.yaml is
all it takes to switch from tiny to real weights. Outputs are (N, D) float32 numpy arrays; the
scoring on them is pure (`metrics.clip_t`, `metrics.identity_similarity`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from lcd.evaluate.config import EvaluateConfig
from lcd.models.loader import load_clip, load_dino
from lcd.models.sources import ModelSource


@dataclass
class Embedders:
    clip: Any
    clip_processor: Any
    dino: Any
    dino_processor: Any
    sources: dict[str, ModelSource]
    batch_size: int = 16

    @torch.no_grad()
    def clip_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """(H, W, 3) uint8 images -> (N, D) projected CLIP image embeddings."""
        return self._batched(images, lambda b: self.clip.get_image_features(
            pixel_values=self._pixels(self.clip_processor, b, self.clip)))

    @torch.no_grad()
    def clip_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Prompts -> (N, D) projected CLIP text embeddings (truncated at CLIP's 77 tokens)."""
        dev = self.clip.device

        def run(batch):
            tok = self.clip_processor.tokenizer(list(batch), padding=True, truncation=True, max_length=77,
                                                return_tensors="pt")
            return self.clip.get_text_features(input_ids=tok.input_ids.to(dev), attention_mask=tok.attention_mask.to(dev))

        return self._batched(texts, run)

    @torch.no_grad()
    def dino_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """(H, W, 3) uint8 images -> (N, D) DINO [CLS] features of the last layer."""
        return self._batched(images, lambda b: self.dino(
            pixel_values=self._pixels(self.dino_processor, b, self.dino)).last_hidden_state[:, 0])

    @staticmethod
    def _pixels(processor, batch, model) -> torch.Tensor:
        px = processor(images=list(batch), return_tensors="pt")["pixel_values"]
        return px.to(device=model.device, dtype=model.dtype)

    def _batched(self, xs: Sequence, fn) -> np.ndarray:
        out = [fn(xs[i : i + self.batch_size]).float().cpu().numpy() for i in range(0, len(xs), self.batch_size)]
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def load_embedders(cfg: EvaluateConfig, clip_default: str, *, dtype: str = "float32", device: str = "cpu") -> Embedders:
    """Load CLIP (cfg.clip or `clip_default`, i.e. models.clip) and DINO through lcd's loader."""
    clip, clip_proc, clip_src = load_clip(cfg.clip or clip_default, revision=cfg.clip_revision, dtype=dtype, device=device)
    dino, dino_proc, dino_src = load_dino(cfg.dino, revision=cfg.dino_revision, dtype=dtype, device=device)
    return Embedders(clip, clip_proc, dino, dino_proc, {"clip": clip_src, "dino": dino_src}, cfg.batch_size)
