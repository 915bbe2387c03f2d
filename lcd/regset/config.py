"""`regset` section of params.yaml: where candidates come from, how they are filtered and fetched."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from lcd.config_base import StrictConfig


class RegsetConfig(StrictConfig):
    """Build ~`top_n` real class images whose captions are CLIP-close to `class_prompt`.

    source "metadata": `shards` are LAION-style Parquet files (a file, a folder of *.parquet, a
    glob, or fsspec URLs) with at least `url_col` and `caption_col`.
    source "clip_back": `backend_url` is a clip-retrieval `clip back` (…/knn-service) serving
    `backend_index`; it is queried with clip-retrieval's ClipClient in text modality.
    `clip_model` is an open_clip model: a local folder written by `write_tiny_open_clip` (or of
    the same layout: `<ARCH>.json` + `open_clip_model.safetensors`), or "ARCH/path-or-tag".
    """

    class_prompt: str = "dog"
    source: Literal["metadata", "clip_back"] = "metadata"
    shards: list[str] = []
    url_col: str = "url"
    caption_col: str = "caption"
    backend_url: str | None = None
    backend_index: str = "regset"
    backend_num_results: int = Field(1000, ge=1, le=100_000)  # candidates asked of clip back
    clip_model: str = "models/tiny/open_clip"
    threshold: float = Field(0.85, ge=-1.0, le=1.0)  # keep captions with cosine > threshold
    top_n: int = Field(200, ge=1, le=100_000)
    embed_batch_size: int = Field(256, ge=1, le=65_536)
    # download (img2dataset)
    image_size: int = Field(512, ge=8, le=4096)  # resize + center crop to image_size x image_size
    timeout_s: int = Field(10, ge=1, le=600)  # per-URL network timeout
    retries: int = Field(0, ge=0, le=10)
    processes: int = Field(1, ge=1, le=256)
    threads: int = Field(16, ge=1, le=1024)
    min_image_size: int = Field(64, ge=1)  # decode check: smallest side accepted
    retry_failed: bool = False  # re-try URLs that failed in an earlier run (else cached failure)
    image_text_min: float | None = Field(None, ge=-1.0, le=1.0)  # optional image-caption re-check
    # shortfall: generated class images with the base model (models.sd)
    generate_shortfall: bool = True
    gen_size: int = Field(512, ge=64, le=2048)
    gen_steps: int = Field(50, ge=1, le=1000)
    gen_guidance: float = Field(6.0, ge=0.0, le=50.0)
    gen_batch_size: int = Field(4, ge=1, le=256)
    seed: int = 0

    @model_validator(mode="after")
    def _source_needs(self):
        if self.source == "clip_back" and not self.backend_url:
            raise ValueError("source 'clip_back' needs backend_url (e.g. http://127.0.0.1:1234/knn-service)")
        if self.gen_size % 8:
            raise ValueError(f"gen_size must be a multiple of 8 (the VAE downsamples by 8), got {self.gen_size}")
        return self
