"""Typed configuration: `params.yaml` (one section per stage) -> frozen pydantic models.

Unknown keys are errors (a typo must not silently fall back to a default). The resolved config
is saved beside every output, so a result can be reproduced from its own metadata.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from lcd.config_base import StrictConfig
from lcd.edit.config import EditConfig
from lcd.errors import LcdError
from lcd.io.documents import kind, load_yaml_file, one_line
from lcd.evaluate.config import EvaluateConfig
from lcd.io.config import IoConfig
from lcd.masks.config import MasksConfig
from lcd.models.config import ModelsConfig
from lcd.regset.config import RegsetConfig
from lcd.train.config import TrainConfig

__all__ = ["EditConfig", "IoConfig", "ModelsConfig", "Params", "load_params"]


class Params(StrictConfig):
    """The whole `params.yaml`: one section per stage, each defined beside the code it configures."""

    models: ModelsConfig = ModelsConfig()
    edit: EditConfig = EditConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    regset: RegsetConfig = RegsetConfig()
    masks: MasksConfig = MasksConfig()
    io: IoConfig = IoConfig()  # deadlines and byte limit of every network read (lcd.io.http)


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml; an unknown or invalid key is an error naming it."""
    p = Path(path)
    # depth, alias-expansion and size limits, duplicate keys refused, binary / UTF-16 named (lcd.io.documents)
    raw = load_yaml_file(p, "params file")
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise LcdError(f"{p}: params must be a mapping of sections, got {kind(raw, 'YAML')}", item=str(p))
    try:
        return Params.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "params"
        raise LcdError(f"{p}: {where}: {one_line(first['msg'], 300)}", item=f"{p}:{where}") from None
