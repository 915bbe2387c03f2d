"""Typed configuration of concept fine-tuning (the `train` section of params.yaml).

Defaults follow Custom Diffusion (Kumari et al., 2023): AdamW, lr 1e-5, batch 4, 600 steps, no
warmup, only cross-attention K/V plus the new token's embedding train, prior preservation with
weight 1.0, and the rescale augmentation with a loss mask.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from lcd.config_base import StrictConfig, multiple_of_8

Method = Literal["kv", "crossattn", "lora", "full"]


class TrainConfig(StrictConfig):
    """One fine-tuning run. `method`: 'kv' (attn2 to_k/to_v), 'crossattn' (attn2 q/k/v/out),
    'lora' (peft LoRA of rank `lora_rank` on attn2 to_k/to_v), 'full' (every UNet weight; used by
    `lcd analyze-layers` and the benchmark, not meant for concepts)."""

    method: Method = "kv"
    template: str = "a photo of {token} {class_word}"  # instance caption; {token} and {class_word}
    class_template: str = "a photo of a {class_word}"  # caption of prior (class) images
    lr: float = Field(1e-5, gt=0.0, le=1.0)
    token_lr: float | None = Field(None, gt=0.0, le=1.0)  # None: same as lr
    weight_decay: float = Field(1e-2, ge=0.0, le=1.0)
    adam_beta1: float = Field(0.9, ge=0.0, lt=1.0)
    adam_beta2: float = Field(0.999, ge=0.0, lt=1.0)
    adam_eps: float = Field(1e-8, gt=0.0)
    max_grad_norm: float = Field(1.0, gt=0.0)
    batch_size: int = Field(4, ge=1, le=256)
    grad_accum: int = Field(1, ge=1, le=1024)
    steps: int = Field(600, ge=1, le=1_000_000)  # optimizer steps
    resolution: int = Field(512, ge=64, le=2048)
    lora_rank: int = Field(4, ge=1, le=1024)
    lora_alpha: float | None = None  # None: equal to the rank (scale 1)
    min_photos: int = Field(3, ge=1)
    min_photo_px: int = Field(256, ge=8)  # shorter side of a concept photo must reach this
    prior: bool = True  # prior preservation loss
    prior_weight: float = Field(1.0, ge=0.0)
    reg_dir: str | None = None  # regularization set; None: generate class images
    num_class_images: int = Field(200, ge=1)
    class_image_steps: int = Field(50, ge=1, le=1000)  # DDIM steps for generated class images
    class_image_guidance: float = Field(6.0, ge=0.0)
    augment: bool = True  # Custom Diffusion rescale augmentation with caption words + loss mask
    scale_range: tuple[float, float] = (0.4, 1.4)
    flip_p: float = Field(0.5, ge=0.0, le=1.0)
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"  # autocast; GPU only
    gradient_checkpointing: bool = False
    use_8bit_adam: bool = False  # needs bitsandbytes (checked before any work)
    checkpoint_every: int = Field(100, ge=0)  # 0: no intermediate checkpoints
    keep_checkpoints: int = Field(2, ge=1)
    validate_every: int = Field(0, ge=0)  # 0: no validation images
    validation_prompt: str = "a photo of {token} {class_word} on a beach"
    validation_steps: int = Field(25, ge=1)
    progress: bool = True
    seed: int = 0

    @field_validator("resolution")
    @classmethod
    def _multiple_of_8(cls, v: int) -> int:
        return multiple_of_8("resolution", v)

    @field_validator("template")
    @classmethod
    def _has_token(cls, v: str) -> str:
        if "{token}" not in v:
            raise ValueError(f"template must contain {{token}} (the concept's pseudo-word), got {v!r}")
        return v

    @model_validator(mode="after")
    def _scale_range(self):
        lo, hi = self.scale_range
        if not 0.1 <= lo <= hi <= 4.0:
            raise ValueError(f"scale_range must satisfy 0.1 <= low <= high <= 4, got {self.scale_range}")
        return self


class ConceptSpec(StrictConfig):
    """One concept to learn: its photo folder, pseudo-word, class word and init word."""

    photos: str
    token: str = "[P]"
    class_word: str = ""
    init_word: str | None = None  # word whose embedding initialises the token; None: class word
