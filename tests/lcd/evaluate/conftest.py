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
