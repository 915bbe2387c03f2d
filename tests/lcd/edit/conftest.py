import numpy as np
import pytest

from lcd.config import EditConfig


@pytest.fixture
def small_cfg():
    """Working size 64, 3 DDIM steps: the tiny model's seconds-scale setting."""
    return EditConfig(steps=3, size=64, dilate_px=2, feather_px=2, guidance=6.0)


@pytest.fixture
def scene():
    """A 70x100 noise image with a rectangular mask in it (odd size: exercises crop + resize)."""
    img = np.random.RandomState(0).randint(0, 256, (70, 100, 3), dtype=np.uint8)
    mask = np.zeros((70, 100), bool)
    mask[20:45, 30:70] = True
    return img, mask
