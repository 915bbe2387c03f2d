"""The shipped parameter files: params.yaml runs the tiny models on CPUs, params.sd15.yaml holds
the paper's settings, params.sdxl.yaml SDXL's; same keys (dvc.yaml names them), all valid typed configs."""

from __future__ import annotations

from pathlib import Path

import yaml

from lcd.config import load_params

REPO = Path(__file__).resolve().parents[1]


def _keys(d: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in d.items():
        out.add(prefix + k)
        if isinstance(v, dict):
            out |= _keys(v, f"{prefix}{k}.")
    return out


def test_the_files_have_the_same_keys_and_validate():
    tiny, sd15, sdxl = (yaml.safe_load((REPO / f).read_text()) for f in ("params.yaml", "params.sd15.yaml",
                                                                         "params.sdxl.yaml"))
    assert _keys(tiny) == _keys(sd15) == _keys(sdxl)
    for f in ("params.yaml", "params.sd15.yaml", "params.sdxl.yaml"):
        load_params(REPO / f)


def test_sdxl_file_holds_sdxls_settings():
    """1024 px everywhere an image is made, Euler at guidance 5 (diffusers' SDXL defaults), and a
    VAE that cannot overflow (float32 beside a float16 UNet)."""
    p = load_params(REPO / "params.sdxl.yaml")
    assert p.models.sd == "stabilityai/stable-diffusion-xl-base-1.0" and p.models.variant == "fp16"
    assert (p.models.dtype, p.models.vae_dtype) == ("float16", "float32")
    assert (p.edit.scheduler, p.edit.steps, p.edit.guidance, p.edit.size) == ("euler", 50, 5.0, 1024)
    assert p.train.resolution == p.regset.image_size == p.regset.gen_size == 1024


def test_sd15_file_holds_the_papers_settings():
    p = load_params(REPO / "params.sd15.yaml")
    assert p.models.sd == "stable-diffusion-v1-5/stable-diffusion-v1-5" and p.models.sam_type == "vit_h"
    assert (p.edit.scheduler, p.edit.steps, p.edit.guidance, p.edit.size) == ("ddim", 60, 6.0, 512)
    t = p.train
    assert (t.method, t.lr, t.batch_size, t.steps, t.resolution, t.prior, t.num_class_images) == \
        ("kv", 1e-5, 4, 600, 512, True, 200)
    assert p.regset.threshold == 0.85 and p.regset.top_n == 200 and p.regset.image_size == 512
    assert (p.masks.auto.pred_iou_thresh, p.masks.auto.stability_score_thresh) == (0.88, 0.95)


def test_default_file_names_the_tiny_models_lcd_models_tiny_writes(tiny_dir):
    """params.yaml's model paths are exactly where `lcd models tiny models/tiny` puts them, and
    its sizes are the CPU ones (a full-size setting there is what made the first hour silent)."""
    p = load_params(REPO / "params.yaml")
    for ref in (p.models.sd, p.models.sam, p.models.clip, p.evaluate.dino, p.regset.clip_model):
        rel = Path(ref).relative_to("models/tiny")
        assert (tiny_dir / rel).exists(), ref
    assert p.edit.steps <= 8 and p.edit.size <= 128 and p.train.steps <= 8 and p.train.resolution <= 64
    assert p.train.num_class_images <= 4 and p.regset.top_n <= 4 and p.regset.gen_size <= 64
