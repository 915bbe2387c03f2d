"""Every model family loads through the production loader; bad references fail clearly."""

import pickle

import pytest
import torch

from lcd.errors import ModelLoadError
from lcd.models.ldm_format import save_single_file
from lcd.models.loader import load_clip, load_sam, load_sd_pipeline
from lcd.io.hashing import sha256_tree


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_tiny_folder_loads_with_its_pins(tiny_dir, tiny_sd):
    pipe = tiny_sd.pipe
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert pipe.unet.config.cross_attention_dim == 32
    assert any(n.endswith("attn2.to_k") for n, _ in pipe.unet.named_modules())
    assert len(pipe.tokenizer) == 49408 and pipe.tokenizer("a photo of a cat").input_ids == [
        49406, 320, 1125, 539, 320, 2368, 49407]
    assert tiny_sd.source.kind == "folder"
    assert tiny_sd.source.sha256 == sha256_tree(tiny_dir / "sd")


def test_inpaint_variant_loads_as_inpaint_pipeline(tiny_dir):
    lp = load_sd_pipeline(tiny_dir / "sd-inpaint")
    assert lp.is_inpaint_model and type(lp.pipe).__name__ == "StableDiffusionInpaintPipeline"


def test_single_file_safetensors_round_trip_is_bit_exact(tiny_dir, tiny_sd, tmp_path):
    path = save_single_file(tiny_sd.pipe, tmp_path / "tiny.safetensors")
    lp = load_sd_pipeline(path, single_file_config=tiny_dir / "sd")
    assert lp.source.kind == "single_file" and len(lp.source.sha256) == 64
    for name in ("unet", "vae", "text_encoder"):
        assert _same_weights(getattr(tiny_sd.pipe, name), getattr(lp.pipe, name)), name


def test_single_file_ckpt_loads_weights_only(tiny_dir, tiny_sd, tmp_path):
    from lcd.models.ldm_format import to_ldm_state_dict

    ckpt = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": to_ldm_state_dict(tiny_sd.pipe)}, ckpt)
    lp = load_sd_pipeline(ckpt, single_file_config=tiny_dir / "sd")
    assert _same_weights(tiny_sd.pipe.unet, lp.pipe.unet)


class _Evil:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_code_in_ckpt_is_refused(tiny_dir, tmp_path):
    ckpt, marker = tmp_path / "evil.ckpt", tmp_path / "pwned"
    with open(ckpt, "wb") as f:
        pickle.dump({"state_dict": {"x": _Evil(str(marker))}}, f)
    with pytest.raises(ModelLoadError, match="evil.ckpt"):
        load_sd_pipeline(ckpt, single_file_config=tiny_dir / "sd")
    assert not marker.exists()


def test_sam_and_clip_load(tiny_dir):
    sam, src = load_sam(tiny_dir / "sam" / "sam_vit_tiny.pth", "vit_tiny")
    assert type(sam).__name__ == "Sam" and sam.image_encoder.img_size == 1024
    assert src.kind == "single_file"
    model, processor, src = load_clip(tiny_dir / "clip")
    assert model.config.projection_dim == 32 and src.kind == "folder"


def test_dtype_is_an_argument(tiny_dir):
    lp = load_sd_pipeline(tiny_dir / "sd", dtype="bfloat16")
    assert lp.pipe.unet.dtype == torch.bfloat16


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda d: load_sd_pipeline(d / "nope"), "nope: model path not found"),
        (lambda d: load_sd_pipeline("someone/unreachable-model"), "someone/unreachable-model: cannot resolve hub"),
        (lambda d: load_sd_pipeline(d / "sam"), "not a diffusers pipeline folder"),
        (lambda d: load_sd_pipeline(d / "sd", dtype="float8"), "dtype must be one of"),
        (lambda d: load_sam(d / "sam" / "sam_vit_tiny.pth", "vit_b"), "weights do not fit SAM type 'vit_b'"),
        (lambda d: load_sam(d / "sam" / "sam_vit_tiny.pth", "vit_x"), "sam_type must be one of"),
        (lambda d: load_clip(d / "sd"), "failed to load CLIP"),
    ],
)
def test_bad_references_raise_naming_the_item(tiny_dir, call, match):
    with pytest.raises(ModelLoadError, match=match):
        call(tiny_dir)


def test_tiny_models_are_deterministic(tmp_path):
    from lcd.models.tiny import write_tiny_sd

    a = write_tiny_sd(tmp_path / "a")
    b = write_tiny_sd(tmp_path / "b")
    assert sha256_tree(a) == sha256_tree(b)
