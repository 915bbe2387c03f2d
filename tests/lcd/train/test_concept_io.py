"""Concept folders against stock diffusers: our export loads there, their weights load here.

diffusers 0.39 can read Custom Diffusion weights and silently not install them (issue #9320), so
every check here compares generated images, never 'it loaded without an error'.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lcd.concepts.io import (
    DIFFUSERS_WEIGHTS_NAME,
    apply_concepts,
    export_diffusers,
    import_diffusers,
    load_concept,
    save_concept,
    token_file_name,
)
from lcd.errors import ModelLoadError
from lcd.train.config import ConceptSpec
from lcd.train.loop import train_concepts

PROMPT = "a photo of [P] dog"


@pytest.fixture(scope="module")
def trained(tiny_dir, tmp_path_factory):
    """A 2-step K/V concept on the dog photos, saved; (folder, image from the trained pipeline)."""
    from PIL import Image

    from lcd.models.loader import load_sd_pipeline
    from lcd.train.config import TrainConfig

    from pathlib import Path

    photos = tmp_path_factory.mktemp("dogs")
    for f in sorted((Path(__file__).resolve().parents[3] / "samples" / "concepts" / "dog").glob("*.jpg")):
        Image.open(f).convert("RGB").resize((64, 64)).save(photos / f.name)
    lp = load_sd_pipeline(tiny_dir / "sd")
    cfg = TrainConfig(resolution=64, batch_size=2, steps=2, min_photo_px=32, lr=1e-2, prior=False,
                      checkpoint_every=0, progress=False)
    res = train_concepts(lp, [ConceptSpec(photos=str(photos), class_word="dog")], cfg)
    out = tmp_path_factory.mktemp("concept")
    save_concept(res.concept, out)
    return out, lp


def _ours_and_stock(folder, fresh_sd, tmp_path, pass_pipeline: bool):
    """Our loader's pipeline with the concept, and a stock diffusers pipeline loading our export."""
    ours = fresh_sd()
    apply_concepts(ours.pipe, [load_concept(folder)])
    export_diffusers(load_concept(folder), ours.pipe.unet, tmp_path)
    stock = fresh_sd().pipe
    extra = {"_pipeline": stock} if pass_pipeline else {}
    stock.unet.load_attn_procs(str(tmp_path), weight_name=DIFFUSERS_WEIGHTS_NAME, **extra)
    stock.load_textual_inversion(str(tmp_path), weight_name=token_file_name("[P]"), token="[P]")
    return ours, stock


def test_stock_diffusers_loads_our_export_to_the_same_image(trained, fresh_sd, generate, tmp_path):
    folder, trained_lp = trained
    ours, stock = _ours_and_stock(folder, fresh_sd, tmp_path, pass_pipeline=True)
    a, b = generate(ours.pipe, PROMPT), generate(stock, PROMPT)
    base = generate(fresh_sd().pipe, "a photo of dog dog")
    assert np.abs(a - base).max() > 1e-2  # the concept changes the image ...
    np.testing.assert_allclose(a, b, atol=1e-4)  # ... and stock diffusers reproduces it
    np.testing.assert_allclose(a, generate(trained_lp.pipe, PROMPT), atol=0)


def test_without_pipeline_arg_diffusers_silently_drops_the_weights(trained, fresh_sd, generate, tmp_path):
    """Documents the trap our export docstring warns about: no error, no K/V."""
    folder, _ = trained
    ours, stock = _ours_and_stock(folder, fresh_sd, tmp_path, pass_pipeline=False)
    assert np.abs(generate(ours.pipe, PROMPT) - generate(stock, PROMPT)).max() > 1e-3


def _diffusers_trained(unet, seed: int = 1):
    """Install diffusers' CustomDiffusionAttnProcessor on every attention layer as
    train_custom_diffusion.py does (train_kv=True, train_q_out=False on attn2; K/V copied from the
    base), then perturb K/V as training would."""
    from diffusers.models.attention_processor import CustomDiffusionAttnProcessor

    g = torch.Generator().manual_seed(seed)
    weights = {n: p for n, p in unet.named_parameters()}
    procs = {}
    for name in unet.attn_processors:
        mod = name[: -len(".processor")]
        if name.endswith("attn1.processor"):
            procs[name] = CustomDiffusionAttnProcessor(train_kv=False, train_q_out=False, hidden_size=None, cross_attention_dim=None)
            continue
        k = weights[f"{mod}.to_k.weight"]
        p = CustomDiffusionAttnProcessor(train_kv=True, train_q_out=False, hidden_size=k.shape[0], cross_attention_dim=k.shape[1])
        with torch.no_grad():
            p.to_k_custom_diffusion.weight.copy_(k + 0.2 * torch.randn(k.shape, generator=g))
            p.to_v_custom_diffusion.weight.copy_(weights[f"{mod}.to_v.weight"] + 0.2 * torch.randn(k.shape, generator=g))
        procs[name] = p
    unet.set_attn_processor(procs)


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_import_diffusers_trained_custom_diffusion(fresh_sd, generate, tmp_path, fmt):
    ref = fresh_sd().pipe
    ref.tokenizer.add_tokens(["<new1>"])
    ref.text_encoder.resize_token_embeddings(len(ref.tokenizer))
    new_id = ref.tokenizer.convert_tokens_to_ids("<new1>")
    row = torch.randn(ref.text_encoder.config.hidden_size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref.text_encoder.get_input_embeddings().weight[new_id] = row
    _diffusers_trained(ref.unet)
    # saved the way the diffusers script saves: save_attn_procs + {token: embedding} per token
    ref.unet.save_attn_procs(str(tmp_path), safe_serialization=fmt == "safetensors")
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file({"<new1>": row}, str(tmp_path / "<new1>.safetensors"))
    else:
        torch.save({"<new1>": row}, tmp_path / "<new1>.bin")
    expected = generate(ref, "a photo of <new1> dog")
    concept = import_diffusers(tmp_path)
    assert concept.tokens == ["[new1]"] and concept.method == "kv"
    lp = fresh_sd()
    apply_concepts(lp.pipe, [concept])
    got = generate(lp.pipe, "a photo of [new1] dog")
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert np.abs(got - generate(fresh_sd().pipe, "a photo of dog dog")).max() > 1e-2


@pytest.mark.parametrize("method", ["lora", "crossattn"])
def test_lora_and_crossattn_concepts_export(fresh_sd, generate, tmp_path, dog_photos, tiny_cfg, method):
    """LoRA is merged into K/V; crossattn also exports q/out (diffusers' train_q_out)."""
    lp = fresh_sd()
    res = train_concepts(lp, [ConceptSpec(photos=str(dog_photos), class_word="dog")],
                         tiny_cfg(steps=2, method=method, lora_rank=2, lr=1e-2))
    export_diffusers(res.concept, fresh_sd().pipe.unet, tmp_path)
    stock = fresh_sd().pipe
    stock.unet.load_attn_procs(str(tmp_path), weight_name=DIFFUSERS_WEIGHTS_NAME, _pipeline=stock)
    stock.load_textual_inversion(str(tmp_path), weight_name=token_file_name("[P]"), token="[P]")
    np.testing.assert_allclose(generate(stock, PROMPT), generate(lp.pipe, PROMPT), atol=1e-4)


def test_import_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="no pytorch_custom_diffusion_weights.safetensors"):
        import_diffusers(tmp_path)
    from safetensors.torch import save_file

    save_file({"x.processor.to_k_custom_diffusion.weight": torch.ones(2, 2)}, str(tmp_path / DIFFUSERS_WEIGHTS_NAME))
    with pytest.raises(ModelLoadError, match="no token embedding file"):
        import_diffusers(tmp_path)
    save_file({"x.processor.something.weight": torch.ones(2, 2)}, str(tmp_path / DIFFUSERS_WEIGHTS_NAME))
    with pytest.raises(ModelLoadError, match="unexpected key x.processor.something.weight"):
        import_diffusers(tmp_path)


def test_load_concept_errors(tmp_path, trained, fresh_sd):
    with pytest.raises(ModelLoadError, match="not a concept folder"):
        load_concept(tmp_path)
    folder, _ = trained
    c = load_concept(folder)
    c.embeddings = torch.zeros(1, 7)
    with pytest.raises(ModelLoadError, match="token embeddings have width 7 but the base text encoder has 32"):
        apply_concepts(fresh_sd().pipe, [c])
    a, b = load_concept(folder), load_concept(folder)
    b.tokens = ["[Q]"]
    b.name = "other"
    with pytest.raises(ModelLoadError, match="both replace the cross-attention K/V weights"):
        apply_concepts(fresh_sd().pipe, [a, b])


def test_base_mismatch_warning(trained, tiny_sd):
    from lcd.concepts.io import base_mismatch
    from lcd.models.sources import ModelSource

    c = load_concept(trained[0])
    assert base_mismatch(c, tiny_sd.source) is None  # trained on the same tiny weights
    other = ModelSource(ref="other", kind="folder", sha256="f" * 64)
    assert "trained on" in base_mismatch(c, other) and "ffffffffffff" in base_mismatch(c, other)
