"""Fixtures for concept tests: fresh tiny pipelines and a 2-step image generator (the trained
concepts, `concept_set`, are in tests/lcd/conftest.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch


def _generate(pipe, prompt: str, seed: int = 0) -> np.ndarray:
    """2 DDIM steps at 64 px, (64, 64, 3) float in [0, 1]."""
    g = torch.Generator("cpu").manual_seed(seed)
    return pipe(prompt, num_inference_steps=2, height=64, width=64, generator=g, output_type="np").images[0]


@pytest.fixture
def generate():
    return _generate


@pytest.fixture
def fresh_sd(tiny_dir):
    """A new tiny SD pipeline per call (applying a concept mutates it)."""
    from lcd.models.loader import load_sd_pipeline

    return lambda: load_sd_pipeline(tiny_dir / "sd")
