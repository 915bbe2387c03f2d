"""Which weights to load and where (`params.yaml: models`). The one input of `lcd.models.pipeline.load_sd`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from lcd.config_base import StrictConfig


class ModelsConfig(StrictConfig):
    """Defaults are the tiny models `lcd models tiny` writes.

    For real weights: sd = "stable-diffusion-v1-5/stable-diffusion-v1-5" (hub id, pinned by
    sd_revision), a diffusers folder, or one .safetensors/.ckpt file (SD1.5 and SD1.5-inpainting
    component configs ship with lcd, so no hub is needed); sam = path to sam_vit_h_4b8939.pth with
    sam_type "vit_h".
    """

    sd: str = "models/tiny/sd"  # a 9-channel inpainting checkpoint is detected and used as such
    sd_revision: str | None = None
    sd_single_file_config: str | None = None  # component configs for single files of other bases
    # a diffusers folder's weights variant: "fp16" reads unet/diffusion_pytorch_model.fp16.safetensors
    # and so on (a component without it reads its plain files); null: the plain files, or the one
    # variant a component has when it has no plain file (a `--include "*.fp16.safetensors"` download)
    variant: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
    sam: str = "models/tiny/sam/sam_vit_tiny.pth"
    sam_type: Literal["vit_h", "vit_l", "vit_b", "vit_t", "litemedsam", "vit_tiny"] = "vit_tiny"  # = SAM_TYPES
    clip: str = "models/tiny/clip"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    # the VAE's dtype; auto: float32 when dtype is float16 and the VAE's config asks to be upcast
    # (diffusers' `force_upcast`: float16 VAEs can overflow to NaN), else dtype
    vae_dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    device: str = "cpu"

    def for_training(self) -> "ModelsConfig":
        """These weights loaded in float32, whatever `dtype` says: the trained tensors need float32
        master weights (AdamW's 1e-5 steps vanish in float16), and compute runs in
        `train.mixed_precision`, as diffusers' training scripts keep the UNet in float32."""
        return self.model_copy(update={"dtype": "float32", "vae_dtype": "auto"})
