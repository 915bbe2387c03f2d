"""Pipeline stages and the library module each one needs.

The stage order is the DVC pipeline's: regset -> train -> masks -> edit -> evaluate. A stage
whose module is not installed fails up front with a message naming the module, before any model
is loaded (the segment-anything habit of importing an optional dependency when it is chosen).
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from lcd.errors import LcdError

STAGES = ("regset", "train", "masks", "edit", "evaluate")
# stage -> (module, function the stage calls)
STAGE_FUNCTIONS = {
    "regset": ("lcd.jobs.regsets", "build_concept_regset"),  # wraps lcd.regset per concept
    "train": ("lcd.jobs.training", "train_concept"),  # wraps lcd.train + lcd.concepts
    "masks": ("lcd.jobs.masking", "precompute_masks"),  # wraps lcd.masks.bulk
    "edit": ("lcd.edit.engine", "edit_images"),
    "evaluate": ("lcd.evaluate", "evaluate_edits"),
}


def stage_available(stage: str) -> bool:
    """True when the stage's library function can be imported."""
    mod, fn = STAGE_FUNCTIONS[stage]
    try:
        return importlib.util.find_spec(mod) is not None and hasattr(importlib.import_module(mod), fn)
    except ImportError:
        return False


def available_stages() -> list[str]:
    return [s for s in STAGES if stage_available(s)]


def require_stage(stage: str) -> ModuleType:
    """Import the stage's module or raise LcdError saying which module/function is missing."""
    if stage not in STAGE_FUNCTIONS:
        raise LcdError(f"stage must be one of {STAGES}, got {stage!r}", item="stage")
    mod, fn = STAGE_FUNCTIONS[stage]
    try:
        module = importlib.import_module(mod)
    except ImportError as e:
        raise LcdError(f"stage {stage!r} needs {mod}.{fn}, but {mod} is not installed ({e})", item=mod) from None
    if not hasattr(module, fn):
        raise LcdError(f"stage {stage!r} needs {mod}.{fn}, which {mod} does not define", item=f"{mod}.{fn}")
    return module
