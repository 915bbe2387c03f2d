"""Typed configuration: `params.yaml` (one section per stage) -> frozen pydantic models.

Unknown keys are errors (a typo must not silently fall back to a default). The resolved config
is saved beside every output, so a result can be reproduced from its own metadata.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError, field_validator

from lcd.config_base import StrictConfig, multiple_of_8
from lcd.errors import LcdError
from lcd.evaluate.config import EvaluateConfig
from lcd.masks.config import MasksConfig
from lcd.regset.config import RegsetConfig
from lcd.train.config import TrainConfig


class ModelsConfig(StrictConfig):
    """Which weights to load and where. Defaults are the tiny models `lcd models tiny` writes.

    For real weights: sd = "stable-diffusion-v1-5/stable-diffusion-v1-5" (or a folder, or a
    .safetensors file), sam = path to sam_vit_h_4b8939.pth with sam_type "vit_h".
    """

    sd: str = "models/tiny/sd"  # a 9-channel inpainting checkpoint is detected and used as such
    sd_revision: str | None = None
    sd_single_file_config: str | None = None  # diffusers config folder for single-file checkpoints
    sam: str = "models/tiny/sam/sam_vit_tiny.pth"
    sam_type: Literal["vit_h", "vit_l", "vit_b", "vit_tiny"] = "vit_tiny"
    clip: str = "models/tiny/clip"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    device: str = "cpu"


class EditConfig(StrictConfig):
    """The edit: DDIM steps, guidance, working size, blending and compositing radii."""

    steps: int = Field(60, ge=1, le=1000)
    guidance: float = Field(6.0, ge=0.0, le=50.0)
    size: int = Field(512, ge=64, le=2048)
    eta: float = Field(0.0, ge=0.0, le=1.0)
    negative_prompt: str = ""
    blend: bool = True  # plain models: latent blending outside the mask at each step
    blend_start: float = Field(0.0, ge=0.0, le=1.0)  # fraction of steps before blending starts
    dilate_px: int = Field(8, ge=0, le=256)  # grow the mask before compositing (full-res pixels)
    feather_px: int = Field(8, ge=0, le=256)  # linear ramp width outside the dilated mask
    crop_margin: float = Field(0.25, ge=0.0, le=4.0)  # context around the mask, fraction of its side
    batch_size: int = Field(8, ge=1, le=256)
    seed: int = 0

    @field_validator("size")
    @classmethod
    def _multiple_of_8(cls, v: int) -> int:
        return multiple_of_8("size", v)


class Params(StrictConfig):
    """The whole `params.yaml`. Sections of later stages are added as their modules land."""

    models: ModelsConfig = ModelsConfig()
    edit: EditConfig = EditConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    regset: RegsetConfig = RegsetConfig()
    masks: MasksConfig = MasksConfig()


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml; an unknown or invalid key is an error naming it."""
    p = Path(path)
    if not p.exists():
        raise LcdError(f"{p}: params file not found", item=str(p))
    raw = yaml.safe_load(p.read_text()) or {}
    try:
        return Params.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise LcdError(f"{p}: {where}: {first['msg']}", item=f"{p}:{where}") from None
