"""Fixtures for training tests: 64 px copies of the bundled dog photos, fresh tiny pipelines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

SAMPLES = Path(__file__).resolve().parents[3] / "samples"


@pytest.fixture(scope="session")
def dog_photos(tmp_path_factory) -> Path:
    """The bundled concept photos (512 px) resized to 64 px."""
    out = tmp_path_factory.mktemp("dog64")
    for f in sorted((SAMPLES / "concepts" / "dog").glob("*.jpg")):
        Image.open(f).convert("RGB").resize((64, 64), Image.LANCZOS).save(out / f.name, quality=95)
    return out


@pytest.fixture
def fresh_sd(tiny_dir):
    """A new tiny SD pipeline per call (training mutates it; the session `tiny_sd` must not be)."""
    from lcd.models.loader import load_sd_pipeline

    return lambda: load_sd_pipeline(tiny_dir / "sd")


def _tiny_cfg(**kw):
    from lcd.train.config import TrainConfig

    base = dict(resolution=64, batch_size=2, steps=3, min_photo_px=32, lr=1e-3, prior=False,
                checkpoint_every=0, progress=False)
    return TrainConfig(**(base | kw))


def _generate(pipe, prompt: str, seed: int = 0) -> np.ndarray:
    """2 DDIM steps at 64 px, (64, 64, 3) float in [0, 1]."""
    g = torch.Generator("cpu").manual_seed(seed)
    return pipe(prompt, num_inference_steps=2, height=64, width=64, generator=g, output_type="np").images[0]


@pytest.fixture
def tiny_cfg():
    """TrainConfig factory for 64 px, batch 2, 3 steps, no prior, no checkpoints."""
    return _tiny_cfg


@pytest.fixture
def generate():
    return _generate
