"""Fixtures shared by tests/lcd/concepts and tests/lcd/commands: three tiny concepts trained
separately (2 steps each, 64 px), saved as folders."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

SAMPLES = Path(__file__).resolve().parents[2] / "samples"


@pytest.fixture(scope="session")
def concept_set(tiny_dir, tmp_path_factory) -> dict:
    """{'A': [P] dog (kv), 'B': [Q] toy (kv, other seed, flipped photos), 'L': [L] dog (LoRA rank 2,
    alpha 1)} as Concepts, each trained on its own fresh base and saved to a folder ('<k>_dir')."""
    from lcd.concepts.io import load_concept, save_concept
    from lcd.models.loader import load_sd_pipeline
    from lcd.train.config import ConceptSpec, TrainConfig
    from lcd.train.loop import train_concepts

    root = tmp_path_factory.mktemp("concepts")
    photos = {"dog": root / "dog", "flip": root / "flip"}
    for d in photos.values():
        d.mkdir()
    for f in sorted((SAMPLES / "concepts" / "dog").glob("*.jpg")):
        im = Image.open(f).convert("RGB").resize((64, 64))
        im.save(photos["dog"] / f.name)
        im.transpose(Image.FLIP_TOP_BOTTOM).save(photos["flip"] / f.name)
    cfg = TrainConfig(resolution=64, batch_size=2, steps=2, min_photo_px=32, lr=1e-2, prior=False,
                      checkpoint_every=0, progress=False)
    runs = {"A": (photos["dog"], "[P]", "dog", {}), "B": (photos["flip"], "[Q]", "toy", {"seed": 1}),
            "L": (photos["dog"], "[L]", "dog", {"method": "lora", "lora_rank": 2, "lora_alpha": 1.0, "seed": 2})}
    out: dict = {}
    for k, (ph, tok, word, kw) in runs.items():
        res = train_concepts(load_sd_pipeline(tiny_dir / "sd"), [ConceptSpec(photos=str(ph), token=tok, class_word=word)],
                             cfg.model_copy(update=kw))
        out[f"{k}_dir"] = save_concept(res.concept, root / k)
        out[k] = load_concept(out[f"{k}_dir"])
    return out
