"""The edit's settings (`params.yaml: edit`): sampler, steps, guidance, working size, blending, compositing."""

from __future__ import annotations

from typing import Literal, Union

from pydantic import Field, field_validator

from lcd.config_base import StrictConfig, multiple_of_8

# settings of how a shard runs that cannot change a pixel: left out of item hashes and of the
# `edit_config` recorded in outputs, so changing them redoes nothing and outputs stay identical
# (`output_format` changes the file, not its pixels: a changed format finds no output of that
# name, so its items are redone, and the old files stay)
EXECUTION_ONLY = frozenset({"overlap", "io_threads", "max_image_mp", "png_compress_level", "output_format", "webp_method",
                            "batch_size", "vae_slice", "channels_last", "compile", "compile_backend"})

SchedulerName = Literal["ddim", "dpmpp_2m", "euler_a", "euler", "pndm", "unipc"]


class EditConfig(StrictConfig):
    """The edit: sampler and steps, guidance, working size, blending and compositing radii.

    `scheduler` names the sampler, built from the model's own scheduler config (betas, timestep
    spacing) whatever class the model folder ships (SD1.5 ships PNDM); DDIM is the paper's.
    `eta` applies only to samplers whose step takes it (DDIM). `dilate_px` / `feather_px` shape
    the compositing weight around every region (lcd.edit.region says which dilation applies where).
    """

    scheduler: SchedulerName = "ddim"
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
    seed: int = Field(0, ge=-(2**63), le=2**63 - 1)  # what torch's generator takes (2**70 overflowed there)
    # how a shard runs, not what it makes (EXECUTION_ONLY)
    overlap: bool = True  # read the next batch and write the previous one while the model runs
    max_image_mp: float = Field(200.0, gt=0, le=10_000)  # larger inputs fail before decoding (megapixels)
    io_threads: int = Field(0, ge=0, le=64)  # a batch's items are read / written by this many threads (0: min(8, CPUs))
    # outputs are lossless (the background stays byte-identical): PNG, or WebP (smaller, slower)
    output_format: Literal["png", "webp"] = "png"
    # deflate level of output PNGs (lcd.io.encode): 1-3 fast (ISA-L), 4-9 smaller and slower, 0 stored
    png_compress_level: int = Field(1, ge=0, le=9)
    webp_method: int = Field(0, ge=0, le=6)  # lossless WebP effort: 0 fastest, 6 smallest
    # items per model call; "auto" sizes it from free accelerator memory (lcd.edit.speed), and any
    # batch that runs out of memory is split in halves and retried
    batch_size: Union[int, Literal["auto"]] = 8
    vae_slice: int = Field(0, ge=0, le=256)  # VAE encode/decode in chunks of this many items (0: whole batch)
    channels_last: bool = False  # UNet and VAE in channels_last memory format (faster convolutions on GPUs)
    compile: bool = False  # torch.compile the UNet once per loaded model (first batch pays the compile)
    compile_backend: str = "inductor"  # torch.compile backend ("inductor"; "eager": graph capture only)

    @field_validator("batch_size")
    @classmethod
    def _batch_range(cls, v):
        if v != "auto" and not 1 <= v <= 256:
            raise ValueError(f"edit.batch_size must be 1-256 or 'auto', got {v}")
        return v

    @field_validator("size")
    @classmethod
    def _multiple_of_8(cls, v: int) -> int:
        return multiple_of_8("size", v)
