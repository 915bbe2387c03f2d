"""`masks` section of params.yaml: how SAM masks are computed, stored and post-processed."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from lcd.config_base import StrictConfig


class AutoMaskConfig(StrictConfig):
    """segment_anything's SamAutomaticMaskGenerator settings, passed through unchanged.

    Defaults are SAM's own. `crop_n_layers > 0` adds one encoder pass per extra crop (SAM
    re-embeds each crop); with 0 the automatic masks reuse the image's single embedding.
    """

    points_per_side: int = Field(32, ge=1, le=256)
    points_per_batch: int = Field(64, ge=1, le=4096)  # points per decoder call (both generators)
    pred_iou_thresh: float = Field(0.88, ge=0.0, le=1.0)
    stability_score_thresh: float = Field(0.95, ge=0.0, le=1.0)
    stability_score_offset: float = Field(1.0, ge=0.0)
    box_nms_thresh: float = Field(0.7, ge=0.0, le=1.0)
    crop_n_layers: int = Field(0, ge=0, le=4)
    crop_nms_thresh: float = Field(0.7, ge=0.0, le=1.0)
    crop_overlap_ratio: float = Field(512 / 1500, ge=0.0, lt=1.0)
    crop_n_points_downscale_factor: int = Field(1, ge=1)
    min_mask_region_area: int = Field(0, ge=0)


class MasksConfig(StrictConfig):
    """Bulk SAM masks -> Parquet, then region selection and post-processing for the edit."""

    automatic: bool = True  # run the automatic generator on every image (besides its prompts)
    auto: AutoMaskConfig = AutoMaskConfig()
    multimask: bool = True  # single-point prompts return SAM's 3 candidates with scores
    # bulk: lcd.masks.amg (filters before upsampling; masks equal stock's on photos up to SAM's
    # 1024 px working size, and each kept mask equals stock's upsampling above it); stock:
    # segment_anything's SamAutomaticMaskGenerator, the reference
    generator: Literal["bulk", "stock"] = "bulk"
    # memory for upsampling mask candidates (bulk generator, prompts): they are upsampled in
    # chunks sized to it, so a 12 MP photo needs no more than a 1 MP one; the masks do not change
    memory_budget_mb: int = Field(1024, ge=64, le=1_000_000)
    images_per_batch: int = Field(1, ge=1, le=256)  # images per image-encoder call (GPU throughput)
    # the image encoder's dtype: float16/bfloat16 halve its time on a GPU; masks then differ from
    # float32 at pixels near the threshold, so it is a result setting; float32 on CPU
    encoder_dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    images_per_part: int = Field(64, ge=1, le=100_000)  # images per atomically written part file
    row_group_rows: int = Field(1024, ge=1, le=1_000_000)  # Parquet row group size (streaming reads)
    # Parquet page codec and level. Parts are written once and read many times: zstd 19 writes
    # ~20k masks/s on one core and makes the counts ~8% smaller than zstd 3; brotli 11 saves
    # another ~6% at 5x slower reads. Any codec here is readable by pandas/pyarrow/duckdb/Spark.
    parquet_codec: Literal["zstd", "brotli", "gzip", "snappy", "lz4", "none"] = "zstd"
    parquet_level: int | None = 19
    select: str = "best"  # default selection: largest | best | id:N | point:X,Y | box:X0,Y0,X1,Y1 | text:...
    fill_holes: bool = True
    dilate_px: int = Field(0, ge=0, le=256)
    feather_px: int = Field(0, ge=0, le=256)  # PNG export only; the edit feathers itself
    text_crop_margin: float = Field(0.1, ge=0.0, le=2.0)  # context around a mask's box for CLIP

    def result_settings(self) -> dict:
        """The settings that change which masks are stored (what decides a re-run); storage
        layout (parts, codec), read-time post-processing (select, fill_holes, dilate) and the
        batching knobs (memory_budget_mb, images_per_batch: same masks) do not."""
        return self.model_dump(include={"automatic", "auto", "multimask", "text_crop_margin", "generator",
                                        "encoder_dtype"})

    @model_validator(mode="after")
    def _valid_level(self) -> "MasksConfig":
        ranges = {"zstd": (1, 22), "brotli": (0, 11), "gzip": (1, 9)}
        lo_hi = ranges.get(self.parquet_codec)
        if self.parquet_level is not None:
            if lo_hi is None:
                raise ValueError(f"parquet_level: codec {self.parquet_codec!r} takes no level; set it to null")
            if not lo_hi[0] <= self.parquet_level <= lo_hi[1]:
                raise ValueError(f"parquet_level: {self.parquet_level} is outside {self.parquet_codec}'s "
                                 f"range {lo_hi[0]}..{lo_hi[1]}")
        return self

    @field_validator("select")
    @classmethod
    def _valid_selection(cls, v: str) -> str:
        from lcd.masks.select import parse_selection

        parse_selection(v)  # a typo in params.yaml fails at load, not after the masks are read
        return v
