"""The masked edit on SDXL, through the real loaders: a full-mask edit equals diffusers'
StableDiffusionXLPipeline for every offered scheduler (same weights, prompt and noise), the
background stays byte-identical, the 9-channel inpainting model edits, batches equal singles,
and the single file edits as its folder does."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lcd.config import EditConfig
from lcd.edit.config import SchedulerName
from lcd.edit.engine import EditItem, edit_images, initial_noise
from lcd.edit.prompts import PromptCache
from lcd.models.loader import load_sd_pipeline
from lcd.models.schedulers import SCHEDULERS, build_scheduler


@pytest.fixture(scope="module")
def sdxl(tiny_dir):
    return load_sd_pipeline(tiny_dir / "sdxl")


@pytest.fixture
def quick():
    """Working size 64, 1 Euler step (SDXL's own sampler): wiring, at about a second per edit
    (the samplers' arithmetic is held to diffusers' at 3 steps above)."""
    return EditConfig(scheduler="euler", steps=1, size=64, dilate_px=2, feather_px=2, guidance=6.0)


def _diffusers_sdxl(lp, scheduler: str, prompt: str, seed: int, size: int, steps: int, guidance: float):
    """diffusers' own text-to-image SDXL pipeline on the same components and initial noise."""
    from diffusers import StableDiffusionXLPipeline

    ref = StableDiffusionXLPipeline(**lp.pipe.components, add_watermarker=False)
    ref.scheduler = build_scheduler(scheduler, lp.pipe.scheduler.config)
    ref.set_progress_bar_config(disable=True)
    h = size // lp.latent_factor
    noise, gens = initial_noise([seed], (4, h, h), "cpu", torch.float32)  # gens go on drawing, as ours do
    out = ref(prompt, height=size, width=size, num_inference_steps=steps, guidance_scale=guidance,
              latents=noise, generator=gens, output_type="np").images[0]
    return (out * 255).round().astype(np.uint8)


def test_full_mask_edit_equals_diffusers_sdxl_pipeline_for_every_scheduler(sdxl):
    """Tolerance 1/255: identical float32 ops, rounding to uint8 after float reordering."""
    assert set(SchedulerName.__args__) == set(SCHEDULERS)
    img = np.random.RandomState(3).randint(0, 256, (64, 64, 3), dtype=np.uint8)
    mask = np.ones((64, 64), bool)
    for name in SCHEDULERS:
        # 3 steps: the multistep samplers' second-order updates (dpmpp_2m, unipc) run
        cfg = EditConfig(scheduler=name, steps=3, size=64, dilate_px=0, feather_px=0, blend=False, guidance=6.0)
        ours = edit_images(sdxl, [EditItem(img, mask, "a photo of a dog", 7)], cfg)[0]
        ref = _diffusers_sdxl(sdxl, name, "a photo of a dog", 7, 64, 3, 6.0)
        diff = np.abs(ours.image.astype(int) - ref.astype(int))
        assert diff.max() <= 1, (name, diff.max())
        assert (ours.image != img).mean() > 0.9, name  # it really generated something
        assert ours.meta["model_family"] == "sdxl"


def test_guidance_sees_both_encoders_pooled_and_time_ids(sdxl):
    """The conditioning is SDXL's (context 32 + 48 wide, bigG's pooled projection): another prompt
    gives another result; a negative prompt replaces the zeros of an empty one."""
    img = np.random.RandomState(4).randint(0, 256, (64, 64, 3), dtype=np.uint8)
    mask = np.ones((64, 64), bool)
    cfg = EditConfig(scheduler="euler", steps=1, size=64, dilate_px=0, feather_px=0, blend=False)
    cache = PromptCache.of(sdxl.pipe)
    ctx, pooled = cache.encode_pooled(["a photo of a dog", "a photo of a dog"])
    assert ctx.shape == (2, 77, 80) and pooled.shape == (2, 32) and cache.encoded == 1
    neg, neg_pooled = cache.negative("", 2)
    assert not neg.any() and not neg_pooled.any()  # force_zeros_for_empty_prompt, as diffusers
    a = edit_images(sdxl, [EditItem(img, mask, "a photo of a dog", 1)], cfg)[0].image
    b = edit_images(sdxl, [EditItem(img, mask, "a red car", 1)], cfg)[0].image
    c = edit_images(sdxl, [EditItem(img, mask, "a photo of a dog", 1)], cfg.model_copy(update={"negative_prompt": "x"}))
    assert not np.array_equal(a, b) and not np.array_equal(a, c[0].image)


def test_masked_edit_keeps_background_byte_identical(sdxl, scene, quick):
    img, mask = scene
    cfg = quick.model_copy(update={"scheduler": "euler_a"})  # draws noise each step
    res = edit_images(sdxl, [EditItem(img, mask, "a photo of a dog", 1)], cfg)[0]
    outside = res.alpha == 0
    assert outside.sum() > 0.5 * outside.size
    assert np.array_equal(res.image[outside], img[outside])
    assert (res.image != img).any(axis=2)[mask].mean() > 0.9


def test_batch_of_two_equals_singles(sdxl, scene, quick):
    img, mask = scene
    other = np.roll(img, 10, axis=1)
    items = [EditItem(other, mask, "a red car", 9), EditItem(img, mask, "a photo of a dog", 2)]
    alone = [edit_images(sdxl, [it], quick)[0].image for it in items]
    batch = edit_images(sdxl, items, quick.model_copy(update={"batch_size": 2}))
    for a, b in zip(alone, batch):
        assert np.abs(a.astype(int) - b.image.astype(int)).max() <= 1


def test_nine_channel_sdxl_inpainting_model_edits(tiny_dir, scene, quick):
    lp = load_sd_pipeline(tiny_dir / "sdxl-inpaint")
    assert lp.is_inpaint_model and lp.family == "sdxl"
    img, mask = scene
    res = edit_images(lp, [EditItem(img, mask, "a photo of a dog", 1)], quick)[0]
    outside = res.alpha == 0
    assert np.array_equal(res.image[outside], img[outside])
    assert (res.image != img).any(axis=2)[mask].mean() > 0.9
    # the model is conditioned on the mask: another region of the same crop gives other pixels inside
    mask2 = mask.copy()
    mask2[20:30, 30:40] = False
    res2 = edit_images(lp, [EditItem(img, mask2, "a photo of a dog", 1)], quick)[0]
    both = (res.alpha > 0) & (res2.alpha > 0)
    assert not np.array_equal(res.image[both], res2.image[both])


def test_single_file_edits_as_its_folder(sdxl, tiny_dir, scene, quick):
    one = load_sd_pipeline(tiny_dir / "sdxl-single" / "tiny-sdxl.safetensors")
    img, mask = scene
    a = edit_images(sdxl, [EditItem(img, mask, "a photo of a dog", 3)], quick)[0].image
    b = edit_images(one, [EditItem(img, mask, "a photo of a dog", 3)], quick)[0].image
    assert np.array_equal(a, b)


def test_an_sd15_form_prompt_cache_is_replaced_for_sdxl(sdxl, scene, quick):
    """A caller's `PromptCache(tokenizer, text_encoder)` (one encoder) cannot condition SDXL:
    run_prepared makes the pipeline's own, so the edit is the same as with none given."""
    from lcd.edit.engine import finish_item, prepare_item, run_prepared

    img, mask = scene
    p = prepare_item(EditItem(img, mask, "a photo of a dog", 3), quick)
    stale = PromptCache(sdxl.pipe.tokenizer, sdxl.pipe.text_encoder)
    assert not stale.fits(sdxl.pipe) and PromptCache.of(sdxl.pipe).fits(sdxl.pipe)
    crop = run_prepared(sdxl, [p], quick, stale)[0]
    ref = edit_images(sdxl, [EditItem(img, mask, "a photo of a dog", 3)], quick)[0].image
    assert np.array_equal(finish_item(sdxl, p, crop, quick).image, ref) and stale.encoded == 0


def test_a_concept_on_sdxl_edits_through_load_sd(sdxl, tiny_dir, scene, quick, tmp_path):
    """A concept folder for the tiny SDXL (K/V of every attn2, one token row per encoder) applied
    by load_sd: its token is known to the edit, changes the pixels inside the region only."""
    from lcd.concepts.io import save_concept
    from lcd.models.config import ModelsConfig
    from lcd.models.pipeline import load_sd

    from tests.lcd.concepts.test_sdxl_concepts import _concept

    folder = save_concept(_concept(sdxl.pipe.unet), tmp_path / "dog")
    loaded = load_sd(ModelsConfig(sd=str(tiny_dir / "sdxl")), concepts=[folder])
    assert loaded.tokens == ["[P]"] and loaded.lp.family == "sdxl"
    img, mask = scene
    item = EditItem(img, mask, "a photo of [P] dog", 4)
    res = edit_images(loaded.lp, [item], quick, required_tokens=["[P]"])[0]
    ref = edit_images(sdxl, [EditItem(img, mask, "a photo of a dog", 4)], quick)[0]
    outside = res.alpha == 0
    assert np.array_equal(res.image[outside], img[outside])
    assert not np.array_equal(res.image[mask], ref.image[mask])


def test_lcd_edit_model_sdxl_single_file_records_the_family(tiny_dir, tmp_path):
    """`lcd edit --model FILE` on the tiny SDXL single file: no config setting, the PNG records
    the file's pin and the family."""
    from lcd.cli import main
    from lcd.io.images import read_png_meta

    from tests.conftest import REPO, SAMPLES

    path = tiny_dir / "sdxl-single" / "tiny-sdxl.safetensors"
    out = tmp_path / "o.png"
    assert main(["--params", str(REPO / "params.yaml"), "edit", "--image", str(SAMPLES / "scenes/cat_00.jpg"), "--mask", str(SAMPLES / "masks/cat_00.png"),
                 "--prompt", "a photo of a dog", "--out", str(out), "--model", str(path), "--steps", "1",
                 "--size", "64"]) == 0
    meta = read_png_meta(out)
    assert meta["model_family"] == "sdxl" and meta["model_source"]["kind"] == "single_file"
