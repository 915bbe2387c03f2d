"""`evaluate` section of params.yaml: metric models and the DreamBench protocol in edit mode."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from lcd.config_base import StrictConfig


class SceneSpec(StrictConfig):
    """A reference scene to edit and its mask (non-zero = the region to put the concept in)."""

    image: str
    mask: str


class EvaluateConfig(StrictConfig):
    """Metric models and protocol settings.

    clip: CLIP for CLIP-T / CLIP-I (null -> models.clip); real: "openai/clip-vit-large-patch14".
    dino: DINO ViT for DINO-I; real: "facebook/dino-vits16".
    lpips_backbone: "random" (tiny/test setups: numbers only rank, they are not LPIPS) or a
    torchvision alexnet / vgg16 state dict file (e.g. alexnet-owt-7be5be79.pth).
    lpips_linear: lpips' linear-layer weights (null -> the v0.1 file shipped in the lpips package).
    clip_t_scale: 1.0 = raw cosine as in published tables; 2.5 = Custom Diffusion's code.
    identity_region: compare the whole edit ("full") or the mask's bounding box ("mask_box") with
    the concept photos for CLIP-I / DINO-I.
    msssim_small: images <= 160 px per side: "fewer_scales" (recorded) or "error".
    background_exclude_px: grow the mask by this many pixels before measuring the background, to
    leave out the blend ring an editor feathers by design (0 = the mask as given, as the
    benchmarks do; set it to edit.dilate_px + edit.feather_px to score only what lies beyond it).
    """

    clip: str | None = None
    clip_revision: str | None = None
    dino: str = "models/tiny/dino"
    dino_revision: str | None = None
    lpips_net: Literal["alex", "vgg"] = "alex"
    lpips_backbone: str = "random"
    lpips_linear: str | None = None
    clip_t_scale: float = Field(1.0, gt=0.0)
    identity_region: Literal["full", "mask_box"] = "full"
    msssim_small: Literal["fewer_scales", "error"] = "fewer_scales"
    background_exclude_px: int = Field(0, ge=0, le=256)
    batch_size: int = Field(16, ge=1, le=1024)
    # DreamBench protocol in edit mode
    dreambench: str = "data/dreambench"
    subjects: list[str] = ["dog", "cat"]
    scenes: list[SceneSpec] = [
        SceneSpec(image="samples/scenes/cat_00.jpg", mask="samples/masks/cat_00.png"),
        SceneSpec(image="samples/scenes/backpack_00.jpg", mask="samples/masks/backpack_00.png"),
    ]
    scene_size: int | None = Field(None, ge=64, le=4096)  # resize scenes (square) before editing
    n_prompts: int = Field(25, ge=1, le=25)  # first N of the 25 templates
    seeds: list[int] = [0]
