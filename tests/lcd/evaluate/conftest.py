"""Evaluation fixtures: tiny CLIP + DINO through lcd's loader, LPIPS with a random backbone."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def embedders(tiny_dir):
    from lcd.evaluate.config import EvaluateConfig
    from lcd.evaluate.embedders import load_embedders

    return load_embedders(EvaluateConfig(dino=str(tiny_dir / "dino")), str(tiny_dir / "clip"))


@pytest.fixture(scope="session")
def lpips_random():
    """LPIPS with a random backbone: exact zeros / ordering are meaningful, values are not LPIPS."""
    from lcd.evaluate.background import load_lpips

    return load_lpips("alex", "random")


@pytest.fixture
def trained_dog(dreambench, tiny_dir, tmp_path_factory):
    """A REAL concept: lcd.train, 2 steps at 64 px with the tiny SD on DreamBench's dog photos,
    saved by lcd.concepts.io into `<tmp>/dog/` (the folder `lcd train` writes)."""
    from lcd.concepts.io import save_concept
    from lcd.models.loader import load_sd_pipeline
    from lcd.train.config import ConceptSpec, TrainConfig
    from lcd.train.loop import train_concepts

    cfg = TrainConfig(resolution=64, batch_size=1, steps=2, min_photo_px=32, lr=1e-3, prior=False,
                      checkpoint_every=0, progress=False)
    lp = load_sd_pipeline(tiny_dir / "sd")
    res = train_concepts(lp, [ConceptSpec(photos=str(dreambench / "dog"), class_word="dog")], cfg)
    return save_concept(res.concept, tmp_path_factory.mktemp("concepts") / "dog")
