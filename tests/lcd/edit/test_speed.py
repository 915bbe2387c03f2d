"""GPU-path settings on CPU: each leaves results within rounding of the plain path.

Tolerances: settings that only reorder float work (cached prompts, VAE slices, channels_last,
torch.compile, OOM splits) may move a pixel by float reordering before the uint8 rounding, so
max |diff| <= 2/255 with almost all pixels equal; half precision changes every multiply, so it is
held to a mean |diff| bound instead.
"""

import numpy as np
import pytest
import torch

from lcd.config import EditConfig, ModelsConfig
from lcd.edit.engine import EditItem, edit_images, prepare_item, run_prepared
from lcd.edit.prompts import PromptCache
from lcd.edit.sampler import encode_prompts
from lcd.edit.speed import auto_batch_size, resolve_batch_size
from lcd.jobs.hashes import config_fingerprint
from lcd.models.loader import load_sd_pipeline


def _items(scene, n=3):
    img, mask = scene
    prompts = ["a photo of a dog", "a red car", "a photo of a dog"]
    return [EditItem(np.roll(img, 7 * i, axis=1), mask, prompts[i % 3], seed=i, name=f"it{i}") for i in range(n)]


def _close(a, b, max_diff=2):
    d = np.abs(a.astype(int) - b.astype(int))
    assert d.max() <= max_diff, d.max()
    assert (d > 0).mean() < 0.01, (d > 0).mean()


def test_prompt_cache_encodes_each_distinct_prompt_once_and_matches_direct_encoding(tiny_sd):
    pipe = tiny_sd.pipe
    cache = PromptCache(pipe.tokenizer, pipe.text_encoder)
    a = cache.encode(["a dog", "a cat", "a dog"])
    b = cache.encode(["a cat", ""])
    assert cache.encoded == 3 and a.shape == (3, 77, pipe.text_encoder.config.hidden_size)
    with torch.no_grad():
        direct = torch.cat([encode_prompts(pipe.tokenizer, pipe.text_encoder, [p]) for p in ["a dog", "a cat", ""]])
    torch.testing.assert_close(a[[0, 1]], direct[:2], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b[1], direct[2], atol=1e-5, rtol=1e-5)


def test_prompt_cache_stays_bounded_and_correct_when_full(tiny_sd):
    pipe = tiny_sd.pipe
    cache = PromptCache(pipe.tokenizer, pipe.text_encoder, max_entries=2)
    cache.encode(["a", "b"])
    out = cache.encode(["a", "c"])  # overflows: cleared, both re-encoded
    assert len(cache._cache) == 2
    with torch.no_grad():
        direct = encode_prompts(pipe.tokenizer, pipe.text_encoder, ["a", "c"])
    torch.testing.assert_close(out, direct, atol=1e-5, rtol=1e-5)


def test_shared_prompt_cache_across_batches_equals_plain_edit(tiny_sd, scene, small_cfg):
    items = _items(scene)
    plain = [r.image for r in edit_images(tiny_sd, items, small_cfg)]
    cfg = small_cfg.model_copy(update={"batch_size": 2})
    cache = PromptCache(tiny_sd.pipe.tokenizer, tiny_sd.pipe.text_encoder)
    crops = []
    for chunk in (items[:2], items[2:]):
        crops += run_prepared(tiny_sd, [prepare_item(it, cfg) for it in chunk], cfg, cache)
    assert cache.encoded == 3  # two distinct prompts + the negative prompt, over two calls
    from lcd.edit.engine import finish_item

    for it, crop, ref in zip(items, crops, plain):
        _close(finish_item(tiny_sd, prepare_item(it, cfg), crop, cfg).image, ref)


def test_channels_last_and_vae_slices_stay_within_rounding(tiny_dir, scene, small_cfg):
    items = _items(scene, 2)
    plain = [r.image for r in edit_images(load_sd_pipeline(tiny_dir / "sd"), items, small_cfg)]
    lp = load_sd_pipeline(tiny_dir / "sd")
    cfg = small_cfg.model_copy(update={"channels_last": True, "vae_slice": 1})
    fast = [r.image for r in edit_images(lp, items, cfg)]
    w = next(p for p in lp.pipe.unet.parameters() if p.ndim == 4)
    assert w.is_contiguous(memory_format=torch.channels_last)
    for a, b in zip(fast, plain):
        _close(a, b)


@pytest.mark.slow
def test_compiled_unet_stays_within_rounding(tiny_dir, scene, small_cfg):
    """torch.compile's graph capture (dynamo) with the "eager" backend: the compiled graphs run
    the same kernels, so CPU CI checks capture and guards without a C++ toolchain or inductor's
    minutes of codegen; inductor (the default) is what bench/gpu.sh measures."""
    item = _items(scene, 1)
    cfg = small_cfg.model_copy(update={"steps": 2})
    plain = edit_images(load_sd_pipeline(tiny_dir / "sd"), item, cfg)[0].image
    lp = load_sd_pipeline(tiny_dir / "sd")
    fast = edit_images(lp, item, cfg.model_copy(update={"compile": True, "compile_backend": "eager"}))[0].image
    assert type(lp.pipe.unet).__name__ == "OptimizedModule"
    _close(fast, plain)


def test_half_precision_model_with_upcast_vae(tiny_dir, scene, small_cfg):
    """float16 UNet/text encoder, float32 VAE (vae_dtype auto: AutoencoderKL's force_upcast);
    diffusers' own pipeline call (regset class images) still works with the upcast VAE."""
    items, cfg = _items(scene, 1), small_cfg.model_copy(update={"steps": 2})
    plain = [r.image for r in edit_images(load_sd_pipeline(tiny_dir / "sd"), items, cfg)]
    lp = load_sd_pipeline(tiny_dir / "sd", dtype="float16")
    assert lp.pipe.unet.dtype == torch.float16 and lp.pipe.vae.dtype == torch.float32
    half = [r.image for r in edit_images(lp, items, cfg)]
    for a, b in zip(half, plain):
        assert np.abs(a.astype(int) - b.astype(int)).mean() < 2.0
    img = lp.pipe("a dog", num_inference_steps=1, height=64, width=64, output_type="np").images[0]
    assert np.isfinite(img).all()
    assert load_sd_pipeline(tiny_dir / "sd", dtype="bfloat16").pipe.vae.dtype == torch.bfloat16
    assert load_sd_pipeline(tiny_dir / "sd", dtype="float16", vae_dtype="float16").pipe.vae.dtype == torch.float16


def test_a_batch_that_runs_out_of_memory_is_split_not_failed(tiny_dir, scene, small_cfg):
    items, small_cfg = _items(scene, 3), small_cfg.model_copy(update={"steps": 2})
    plain = [r.image for r in edit_images(load_sd_pipeline(tiny_dir / "sd"), items, small_cfg)]
    lp = load_sd_pipeline(tiny_dir / "sd")
    forward, calls = lp.pipe.unet.forward, []

    def small_memory(x, *a, **k):  # fault injection: an accelerator that fits 2 items (4 rows with CFG)
        calls.append(x.shape[0])
        if x.shape[0] > 4:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return forward(x, *a, **k)

    lp.pipe.unet.forward = small_memory
    out = [r.image for r in edit_images(lp, items, small_cfg.model_copy(update={"batch_size": 3}))]
    assert calls[0] == 6 and set(calls[1:]) == {2, 4}  # 3 items -> 1 + 2
    for a, b in zip(out, plain):
        _close(a, b)


def test_auto_batch_size_from_free_memory():
    assert auto_batch_size(None, 512, torch.float16) == 4  # no accelerator
    assert auto_batch_size(80e9, 512, torch.float16) == 32  # capped
    assert auto_batch_size(8e9, 512, torch.float16) == 4  # 0.8 * 8 GB / 1.5 GB = 4.3
    assert auto_batch_size(8e9, 512, torch.float32) == 2  # twice the bytes per item
    assert auto_batch_size(8e9, 1024, torch.float16) == 1  # four times the pixels
    assert auto_batch_size(1e6, 512, torch.float16) == 1  # never 0


def test_batch_size_auto_resolves_and_execution_settings_leave_hashes_alone(tiny_sd):
    assert resolve_batch_size(tiny_sd, EditConfig(batch_size="auto")) == 4  # CPU
    assert resolve_batch_size(tiny_sd, EditConfig(batch_size=3)) == 3
    for bad in (0, 257, "big"):
        with pytest.raises(ValueError):
            EditConfig(batch_size=bad)
    m = ModelsConfig()
    base = config_fingerprint(EditConfig(), m, "diffusion")
    for change in ({"batch_size": "auto"}, {"batch_size": 2}, {"vae_slice": 2}, {"channels_last": True},
                   {"compile": True}):
        assert config_fingerprint(EditConfig(**change), m, "diffusion") == base, change
    assert config_fingerprint(EditConfig(steps=5), m, "diffusion") != base
    assert config_fingerprint(EditConfig(), ModelsConfig(vae_dtype="float32"), "diffusion") != base
