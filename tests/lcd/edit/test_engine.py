"""The edit engine: background byte-identical, parity with diffusers, determinism, bad input."""

import numpy as np
import pytest
import torch

from lcd.config import EditConfig
from lcd.edit.engine import EditItem, edit_images, initial_noise
from lcd.errors import InputImageError, PromptError
from lcd.io.images import save_png
from lcd.models.loader import load_sd_pipeline


def test_outside_band_is_byte_identical_inside_differs(tiny_sd, scene, small_cfg):
    img, mask = scene
    res = edit_images(tiny_sd, [EditItem(img, mask, "a photo of a dog", 1)], small_cfg)[0]
    outside = res.alpha == 0
    assert outside.sum() > 0.5 * outside.size
    assert np.array_equal(res.image[outside], img[outside])
    changed = (res.image != img).any(axis=2)
    assert changed[mask].mean() > 0.9
    assert res.meta["seed"] == 1 and res.meta["steps"] == 3 and res.meta["model_hash"]
    from lcd.io.images import a1111_parameters

    assert res.meta["output_size"] == "100x70" and "Size: 100x70" in a1111_parameters(res.meta)


def test_full_mask_without_blending_matches_diffusers_inpaint_pipeline(tiny_sd):
    """Same weights, scheduler, prompt and initial noise: our sampler == diffusers' pipeline.

    Tolerance: 1/255. Both run identical float32 ops on the same tensors; the only difference
    allowed is the final rounding to uint8 after tiny float reordering.
    """
    from diffusers import StableDiffusionInpaintPipeline
    from PIL import Image

    img = np.random.RandomState(3).randint(0, 256, (64, 64, 3), dtype=np.uint8)
    mask = np.ones((64, 64), bool)
    cfg = EditConfig(steps=4, size=64, dilate_px=0, feather_px=0, blend=False, guidance=6.0)
    ours = edit_images(tiny_sd, [EditItem(img, mask, "a photo of a dog", 7)], cfg)[0].image
    ref_pipe = StableDiffusionInpaintPipeline(**tiny_sd.pipe.components)
    ref_pipe.set_progress_bar_config(disable=True)
    noise, _ = initial_noise([7], (4, 8, 8), "cpu", torch.float32)
    ref = ref_pipe(
        "a photo of a dog", image=Image.fromarray(img), mask_image=Image.fromarray(mask.astype(np.uint8) * 255),
        height=64, width=64, num_inference_steps=4, guidance_scale=6.0, strength=1.0,
        latents=noise, output_type="np",
    ).images[0]
    ref = (ref * 255).round().astype(np.uint8)
    diff = np.abs(ours.astype(int) - ref.astype(int))
    assert diff.max() <= 1, diff.max()
    assert (ours != img).mean() > 0.9  # and it really generated something


def test_same_seed_same_bytes_other_seed_differs(tiny_sd, scene, small_cfg, tmp_path):
    img, mask = scene
    paths = []
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        res = edit_images(tiny_sd, [EditItem(img, mask, "a photo of a dog", seed)], small_cfg)[0]
        paths.append(save_png(tmp_path / f"{name}.png", res.image, res.meta))
    a, b, c = (p.read_bytes() for p in paths)
    assert a == b
    assert a != c


def test_result_does_not_depend_on_batch_composition(tiny_sd, scene, small_cfg):
    img, mask = scene
    alone = edit_images(tiny_sd, [EditItem(img, mask, "a photo of a dog", 2)], small_cfg)[0].image
    other = np.roll(img, 10, axis=1)
    batch = edit_images(
        tiny_sd,
        [EditItem(other, mask, "a red car", 9), EditItem(img, mask, "a photo of a dog", 2)],
        small_cfg,
    )
    assert np.abs(batch[1].image.astype(int) - alone.astype(int)).max() <= 1


@pytest.mark.parametrize("shape", [(40, 160), (200, 90)])
def test_any_size_and_aspect(tiny_sd, small_cfg, shape):
    h, w = shape
    img = np.random.RandomState(1).randint(0, 256, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), bool)
    mask[h // 4 : h // 2, w // 4 : w // 2] = True
    res = edit_images(tiny_sd, [EditItem(img, mask, "a cat", 0)], small_cfg)[0]
    assert res.image.shape == img.shape
    assert np.array_equal(res.image[res.alpha == 0], img[res.alpha == 0])
    assert (res.image[mask] != img[mask]).any()


def test_empty_mask_returns_input_with_warning(tiny_sd, scene, small_cfg):
    img, _ = scene
    with pytest.warns(UserWarning, match="mask is empty"):
        res = edit_images(tiny_sd, [EditItem(img, np.zeros(img.shape[:2], bool), "a cat", 0, "empty.png")], small_cfg)[0]
    assert np.array_equal(res.image, img) and res.warnings


def test_full_mask_edits_everything(tiny_sd, scene, small_cfg):
    img, _ = scene
    res = edit_images(tiny_sd, [EditItem(img, np.ones(img.shape[:2], bool), "a cat", 0)], small_cfg)[0]
    assert (res.alpha == 1).all()
    assert (res.image != img).any(axis=2).mean() > 0.9


def test_blend_start_changes_result_but_not_background(tiny_sd, scene, small_cfg):
    img, mask = scene
    a = edit_images(tiny_sd, [EditItem(img, mask, "a cat", 0)], small_cfg)[0]
    late = small_cfg.model_copy(update={"blend_start": 0.67})
    b = edit_images(tiny_sd, [EditItem(img, mask, "a cat", 0)], late)[0]
    assert not np.array_equal(a.image, b.image)
    assert np.array_equal(b.image[b.alpha == 0], img[b.alpha == 0])


def test_nine_channel_inpaint_model(tiny_dir, scene, small_cfg):
    lp = load_sd_pipeline(tiny_dir / "sd-inpaint")
    img, mask = scene
    res = edit_images(lp, [EditItem(img, mask, "a cat", 0)], small_cfg)[0]
    assert np.array_equal(res.image[res.alpha == 0], img[res.alpha == 0])
    assert (res.image[mask] != img[mask]).any()


def test_unknown_concept_token_is_a_clear_error(tiny_sd, scene, small_cfg):
    img, mask = scene
    with pytest.raises(PromptError, match=r"scene_1: prompt .* uses concept token \[P\]"):
        edit_images(tiny_sd, [EditItem(img, mask, "a photo of [P] dog", 0, "scene_1")], small_cfg)


def test_prompt_without_required_token_is_a_clear_error(tiny_sd, scene, small_cfg):
    img, mask = scene
    with pytest.raises(PromptError, match=r"scene_2: .*does not contain the concept token \(\[P\]\)"):
        edit_images(tiny_sd, [EditItem(img, mask, "a photo of a dog", 0, "scene_2")], small_cfg, required_tokens=["[P]"])


def test_mask_of_other_size_is_a_clear_error(tiny_sd, scene, small_cfg):
    img, _ = scene
    with pytest.raises(InputImageError, match="scene_3: mask is 10x10 but the image is 100x70"):
        edit_images(tiny_sd, [EditItem(img, np.ones((10, 10), bool), "a cat", 0, "scene_3")], small_cfg)


def test_config_refuses_unknown_keys_and_bad_sizes():
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        EditConfig(stepz=3)
    with pytest.raises(ValueError, match="multiple of 8"):
        EditConfig(size=100)
