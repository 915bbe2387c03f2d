"""What real users have, not only the configs we wrote: the SD1.5 repository's layout (PNDM in
model_index.json, a feature extractor and safety checker listed), every offered sampler against
diffusers' own pipeline, a VAE that downsamples by 2 (diffusers' test dummies), and the hub cache
layout read offline by id and revision."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from lcd.cli import main
from lcd.edit.config import EditConfig
from lcd.edit.engine import EditItem, edit_images
from lcd.io.images import load_image, read_png_meta
from lcd.models.bundled import CONFIGS
from lcd.models.config import ModelsConfig
from lcd.models.pipeline import load_sd
from lcd.models.schedulers import SCHEDULERS, build_scheduler

from tests.conftest import REPO, SAMPLES

PROMPT = "a photo of a dog"


def sd15_layout(tiny_sd_dir: Path, dest: Path) -> Path:
    """The tiny weights laid out as the stable-diffusion-v1-5 repository is: model_index.json
    names PNDMScheduler, CLIPImageProcessor and the safety checker; the scheduler folder holds
    SD1.5's own PNDM config; feature_extractor/ holds its preprocessor config; no safety_checker/
    weights (users run without it, as `safety_checker=None`)."""
    shutil.copytree(tiny_sd_dir, dest)
    index = json.loads((CONFIGS / "sd15" / "model_index.json").read_text())
    (dest / "model_index.json").write_text(json.dumps(index, indent=2))
    shutil.copy(CONFIGS / "sd15" / "scheduler" / "scheduler_config.json", dest / "scheduler" / "scheduler_config.json")
    (dest / "feature_extractor").mkdir()
    shutil.copy(CONFIGS / "sd15" / "feature_extractor" / "preprocessor_config.json", dest / "feature_extractor")
    return dest


@pytest.fixture(scope="module")
def sd15_dir(tiny_dir, tmp_path_factory):
    return sd15_layout(tiny_dir / "sd", tmp_path_factory.mktemp("sd15") / "stable-diffusion-v1-5")


def _params(tmp_path: Path, sd: Path, **edit) -> Path:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["models"]["sd"] = str(sd)
    raw["edit"].update({"steps": 3, "size": 64} | edit)
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def _cli_edit(params: Path, out: Path, *extra: str) -> int:
    return main(["--params", str(params), "edit", "--image", str(SAMPLES / "scenes/cat_00.jpg"),
                 "--mask", str(SAMPLES / "masks/cat_00.png"), "--prompt", PROMPT, "--out", str(out), *extra])


def test_sd15_repository_layout_edits_with_ddim_like_a_ddim_folder(sd15_dir, tiny_dir, tmp_path):
    lp = load_sd(ModelsConfig(sd=str(sd15_dir))).lp
    assert type(lp.pipe.scheduler).__name__ == "PNDMScheduler"  # what the folder ships
    assert _cli_edit(_params(tmp_path, sd15_dir), tmp_path / "sd15.png") == 0
    assert _cli_edit(_params(tmp_path, tiny_dir / "sd"), tmp_path / "ddim.png") == 0
    assert np.array_equal(load_image(tmp_path / "sd15.png"), load_image(tmp_path / "ddim.png"))
    meta = read_png_meta(tmp_path / "sd15.png")
    assert meta["sampler"] == "DDIM" and meta["scheduler_class"] == "DDIMScheduler"
    assert "Sampler: DDIM" in Image_parameters(tmp_path / "sd15.png")
    # the sampler is a setting: PNDM (PLMS) as the folder ships it gives other pixels, and says so
    assert _cli_edit(_params(tmp_path, sd15_dir), tmp_path / "pndm.png", "--scheduler", "pndm") == 0
    assert read_png_meta(tmp_path / "pndm.png")["scheduler_class"] == "PNDMScheduler"
    assert not np.array_equal(load_image(tmp_path / "pndm.png"), load_image(tmp_path / "sd15.png"))


def Image_parameters(path: Path) -> str:
    from PIL import Image

    return Image.open(path).text["parameters"]


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_full_mask_edit_matches_diffusers_pipeline_for_each_sampler(name, sd15_dir):
    """Our edit with a full mask (no compositing, nothing to blend) == diffusers'
    StableDiffusionPipeline with the same sampler, weights, prompt, seed (generator) and steps.
    Tolerance 1/255: identical float32 ops, only the final rounding to uint8 may differ."""
    from diffusers import StableDiffusionPipeline

    sd = load_sd(ModelsConfig(sd=str(sd15_dir)), scheduler=name)
    img = np.random.RandomState(3).randint(0, 256, (64, 64, 3), dtype=np.uint8)
    cfg = EditConfig(scheduler=name, steps=4, size=64, dilate_px=0, feather_px=0, guidance=6.0, eta=0.0)
    ours = edit_images(sd.lp, [EditItem(img, np.ones((64, 64), bool), PROMPT, 7)], cfg)[0].image
    ref_pipe = StableDiffusionPipeline(**sd.lp.pipe.components)
    ref_pipe.scheduler = build_scheduler(name, sd.lp.pipe.scheduler.config)
    ref_pipe.set_progress_bar_config(disable=True)
    ref = ref_pipe(PROMPT, height=64, width=64, num_inference_steps=4, guidance_scale=6.0,
                   generator=[torch.Generator().manual_seed(7)], output_type="np").images[0]
    ref = (ref * 255).round().astype(np.uint8)
    assert np.abs(ours.astype(int) - ref.astype(int)).max() <= 1
    assert (ours != img).mean() > 0.9


def write_dummy_sd(out: Path) -> Path:
    """diffusers' own SD test components (tests/pipelines/stable_diffusion get_dummy_components):
    a 2-block VAE (latent factor 2), a 2-block UNet with cross-attention dim 32, a 5-layer CLIP
    text encoder; with CLIP's real tokenizer instead of the hub's tiny-random-clip."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from lcd.models.tokenizer import write_clip_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(block_out_channels=(4, 8), layers_per_block=1, sample_size=32, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                                norm_num_groups=2)
    vae = AutoencoderKL(block_out_channels=[4, 8], in_channels=3, out_channels=3,
                        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
                        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"], latent_channels=4, norm_num_groups=2)
    text = CLIPTextModel(CLIPTextConfig(bos_token_id=0, eos_token_id=2, hidden_size=32, intermediate_size=37,
                                        layer_norm_eps=1e-05, num_attention_heads=4, num_hidden_layers=5,
                                        pad_token_id=1, vocab_size=49408))
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                          set_alpha_to_one=False)
    tok = CLIPTokenizer.from_pretrained(write_clip_tokenizer(out.parent / "dummy-tokenizer"))
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text, tokenizer=tok, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(out, safe_serialization=True)
    return out


@pytest.mark.slow
def test_a_vae_that_downsamples_by_2_edits_and_trains(tmp_path, capsys):
    model = write_dummy_sd(tmp_path / "dummy-sd")
    sd = load_sd(ModelsConfig(sd=str(model)))
    assert sd.lp.latent_factor == 2
    params = _params(tmp_path, model, steps=2)
    assert _cli_edit(params, tmp_path / "o.png") == 0
    before, after = load_image(SAMPLES / "scenes/cat_00.jpg"), load_image(tmp_path / "o.png")
    assert after.shape == before.shape and (after != before).any()
    photos = tmp_path / "photos"
    photos.mkdir()
    for f in sorted((SAMPLES / "concepts" / "dog").glob("*.jpg"))[:3]:
        shutil.copy(f, photos / f.name)
    capsys.readouterr()
    assert main(["--params", str(params), "train", "--photos", str(photos), "--class-word", "dog",
                 "--out", str(tmp_path / "concept"), "--steps", "2", "--resolution", "64", "--batch-size", "2",
                 "--no-prior"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 2


def test_size_that_is_not_a_multiple_of_the_latent_factor_is_one_line(tmp_path, tiny_dir, capsys):
    """SD's VAE downsamples by 8; a size of 72 is 9 cells, fine; the engine checks the model's factor."""
    from lcd.edit.engine import check_size
    from lcd.errors import LcdError

    check_size(72, 8)
    with pytest.raises(LcdError, match="edit.size 12 is not a multiple of this model's latent factor 8"):
        check_size(12, 8)


def _hub_cache(root: Path, repo_id: str, src: Path, commit: str) -> Path:
    """`src` laid out as huggingface_hub writes its cache: blobs by hash, a snapshot of symlinks,
    refs/main naming the commit."""
    import hashlib

    repo = root / f"models--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / commit
    for f in sorted(p for p in src.rglob("*") if p.is_file()):
        data = f.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snap / f.relative_to(src)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return repo


@pytest.mark.parametrize("revision", [None, "main", "0123456789abcdef0123456789abcdef01234567"])
def test_hub_id_loads_offline_from_the_cache_and_records_the_commit(revision, sd15_dir, tmp_path):
    commit = "0123456789abcdef0123456789abcdef01234567"
    _hub_cache(tmp_path / "hub", "stable-diffusion-v1-5/stable-diffusion-v1-5", sd15_dir, commit)
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["models"].update(sd="stable-diffusion-v1-5/stable-diffusion-v1-5", sd_revision=revision)
    raw["edit"].update(steps=2, size=64)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HOME": str(tmp_path / "hf")}
    out = subprocess.run([sys.executable, "-m", "lcd", "--params", "params.yaml", "edit",
                          "--image", str(SAMPLES / "scenes/cat_00.jpg"), "--mask", str(SAMPLES / "masks/cat_00.png"),
                          "--prompt", PROMPT, "--out", "o.png"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    src = read_png_meta(tmp_path / "o.png")["model_source"]
    assert src == {"ref": "stable-diffusion-v1-5/stable-diffusion-v1-5", "kind": "hub", "sha256": None,
                   "revision": commit, "variant": None,  # the plain files, named
                   "weights": ["text_encoder/model.safetensors", "unet/diffusion_pytorch_model.safetensors",
                               "vae/diffusion_pytorch_model.safetensors"]}
