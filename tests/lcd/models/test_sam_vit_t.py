"""`sam_type: vit_t` (MobileSAM) and `litemedsam`: the published layouts, strict loading, the predictor.

The key list beside this file was recorded from MobileSAM's own source (ChaoningZhang/MobileSAM,
`build_sam_vit_t().state_dict()`), not from lcd, so a builder that drops, renames or reshapes a
tensor of `mobile_sam.pt` fails here.
"""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import numpy as np
import pytest
import torch

from lcd.errors import ModelLoadError
from lcd.models.config import ModelsConfig
from lcd.models.encoders import SAM_TYPES, load_sam
from lcd.models.sam_builders import build_litemedsam
from lcd.models.tiny import write_mobile_sam

KEYS_FILE = Path(__file__).parent / "mobile_sam_keys.txt"
HEAD_KEYS = {"image_encoder.norm_head.weight", "image_encoder.norm_head.bias",
             "image_encoder.head.weight", "image_encoder.head.bias"}


def _recorded_layout() -> dict[str, tuple[int, ...]]:
    out = {}
    for line in KEYS_FILE.read_text().splitlines():
        if line and not line.startswith("#"):
            key, shape = line.split()
            out[key] = () if shape == "scalar" else tuple(int(d) for d in shape.split("x"))
    return out


@pytest.fixture(scope="module")
def mobile_sam_file(tmp_path_factory) -> Path:
    return write_mobile_sam(tmp_path_factory.mktemp("mobile-sam"))


@pytest.fixture(scope="module")
def vit_t(mobile_sam_file):
    """(Sam, ModelSource) from the random mobile_sam.pt through lcd's loader."""
    return load_sam(mobile_sam_file, "vit_t")


def test_written_checkpoint_has_the_published_mobile_sam_layout(mobile_sam_file):
    recorded = _recorded_layout()
    assert len(recorded) == 439 and sum(k.startswith("image_encoder.") for k in recorded) == 302
    state = torch.load(mobile_sam_file, weights_only=True)
    assert {k: tuple(v.shape) for k, v in state.items()} == recorded
    assert list(state) == list(recorded)  # the same order too, as torch.save of upstream's model writes it


@pytest.mark.slow  # one TinyViT pass at 1024 px: ~6 s on 2 idle cores, 20-27 s on a loaded machine
def test_vit_t_loads_strictly_and_runs_sam_predictor(mobile_sam_file, vit_t):
    from segment_anything import SamPredictor

    sam, source = vit_t
    state = torch.load(mobile_sam_file, weights_only=True)
    loaded = sam.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())  # every tensor came from the file
    # and not the builder's init (TinyViT starts attention biases at 0, BN variances at 1)
    assert loaded["image_encoder.layers.1.blocks.0.attn.attention_biases"].abs().min() > 0
    assert not torch.equal(loaded["image_encoder.patch_embed.seq.0.bn.running_var"], torch.ones(32))
    assert sam.image_encoder.img_size == 1024 and source.sha256
    predictor = SamPredictor(sam)
    rgb = (np.random.default_rng(0).random((96, 128, 3)) * 255).astype(np.uint8)
    predictor.set_image(rgb)
    assert tuple(predictor.features.shape) == (1, 256, 64, 64)
    masks, scores, low = predictor.predict(box=np.array([10, 10, 90, 80]), multimask_output=True)
    assert masks.shape == (3, 96, 128) and masks.dtype == bool and scores.shape == (3,)
    assert low.shape == (3, 256, 256) and np.isfinite(scores).all()


def test_vit_t_refuses_a_checkpoint_that_is_not_mobile_sam(mobile_sam_file, tmp_path):
    state = torch.load(mobile_sam_file, weights_only=True)
    del state["image_encoder.head.weight"]
    torch.save(state, tmp_path / "cut.pt")
    with pytest.raises(ModelLoadError, match=r"weights do not fit SAM type 'vit_t': .*image_encoder\.head\.weight"):
        load_sam(tmp_path / "cut.pt", "vit_t")
    with pytest.raises(ModelLoadError, match=r"weights do not fit SAM type 'litemedsam'"):
        load_sam(mobile_sam_file, "litemedsam")  # 3x3 stem and a head: MobileSAM, not LiteMedSAM


def test_litemedsam_layout_is_mobile_sam_with_a_1x1_stem_and_no_head():
    """What lite_medsam.pth holds (435 tensors, checked for real in tests/lcd/masks/test_litemedsam_real.py)."""
    recorded = _recorded_layout()
    lite = {k: tuple(v.shape) for k, v in build_litemedsam().state_dict().items()}
    assert set(lite) == set(recorded) - HEAD_KEYS and len(lite) == 435
    assert lite["image_encoder.patch_embed.seq.0.c.weight"] == (32, 3, 1, 1)
    assert lite["image_encoder.patch_embed.seq.2.c.weight"] == (64, 32, 1, 1)
    same = [k for k in lite if "patch_embed.seq.0.c" not in k and "patch_embed.seq.2.c" not in k]
    assert all(lite[k] == recorded[k] for k in same)


def test_attention_biases_follow_loads_and_dtype_changes(vit_t):
    """TinyViT caches its gathered attention biases in eval mode; lcd regathers them before each
    forward, so weights loaded after `.eval()` and a later `.to(dtype)` take effect."""
    import copy

    attn = copy.deepcopy(vit_t[0].image_encoder.layers[1].blocks[0].attn)  # with its hook; eval: cache filled
    assert not attn.training and hasattr(attn, "ab")
    x = torch.randn(2, 49, 128)
    before = attn(x)
    with torch.no_grad():
        attn.attention_biases.add_(torch.randn_like(attn.attention_biases))
    after = attn(x)
    assert not torch.allclose(before, after)
    attn.train()  # upstream's own path: no cache, biases gathered in forward
    assert torch.allclose(after, attn(x), atol=1e-6)
    attn.eval()  # (upstream's train() returns None)
    attn.to(torch.bfloat16)
    assert attn(x.bfloat16()).dtype == torch.bfloat16


def test_sam_types_flow_through_the_masks_config():
    assert set(get_args(ModelsConfig.model_fields["sam_type"].annotation)) == set(SAM_TYPES)
    assert ModelsConfig(sam_type="vit_t").sam_type == "vit_t"
    with pytest.raises(ValueError, match="sam_type"):
        ModelsConfig(sam_type="vit_x")
    with pytest.raises(ModelLoadError, match=r"^sam_type must be one of .*'vit_t'.*got 'vit_x'$"):
        load_sam("unused.pt", "vit_x")


def test_cli_names_an_unknown_sam_type_in_one_line(tmp_path, capsys):
    from lcd.cli import main

    manifest = tmp_path / "m.csv"
    manifest.write_text("image\nnone.png\n")
    rc = main(["masks", "compute", str(manifest), "--out", str(tmp_path / "o"), "--sam-type", "vit_x"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert err == ("lcd masks: error: sam_type must be one of ('vit_h', 'vit_l', 'vit_b', 'vit_t', "
                   "'litemedsam', 'vit_tiny'), got 'vit_x'")
