"""What an edit takes and gives, as plain data (numpy only, no torch): the noop engine and the
shard loop use these without importing the model stack (a torch import is ~1.3 s of CPU at every
shard run's start). `lcd.edit.engine` re-exports both."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class EditItem:
    """One edit request. image (H, W, 3) uint8; mask (H, W) bool, True = edit."""

    image: np.ndarray
    mask: np.ndarray
    prompt: str
    seed: int = 0
    name: str = "item"


@dataclass
class EditResult:
    image: np.ndarray  # (H, W, 3) uint8, equal to the input wherever alpha == 0
    alpha: np.ndarray  # (H, W) float32 compositing weight actually used
    meta: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
