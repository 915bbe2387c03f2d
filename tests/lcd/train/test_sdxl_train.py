"""Training on the tiny SDXL (diffusers' SDXL test architecture, written by `lcd models tiny` and
loaded by the production loader): exactly the chosen UNet tensors change, and in both text
encoders only the new token's row; the UNet sees each photo's original size and crop as time
ids; class images come from the SDXL pipeline at the run's resolution; resume is exact for both
encoders' rows; Delta_l covers every SDXL layer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lcd.concepts.family import SDXL, family_of
from lcd.train.config import ConceptSpec
from lcd.train.loop import train_concepts
from lcd.train.params import trainable_names


@pytest.fixture
def fresh_sdxl(tiny_dir):
    from lcd.models.loader import load_sd_pipeline

    return lambda: load_sd_pipeline(tiny_dir / "sdxl")


@pytest.fixture(scope="module")
def odd_photos(tmp_path_factory):
    """Three photos of different sizes and aspect ratios (the time ids must tell them apart)."""
    out = tmp_path_factory.mktemp("odd")
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(96, 64), (64, 80), (72, 72)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(out / f"{i}.png")
    return out


def _snapshot(pipe) -> dict[str, dict[str, torch.Tensor]]:
    return {name: {n: p.detach().clone() for n, p in getattr(pipe, name).named_parameters()}
            for name in ("unet", "text_encoder", "text_encoder_2")}


def _changed(before: dict[str, torch.Tensor], module) -> set[str]:
    return {n for n, p in module.named_parameters() if n in before and not torch.equal(p, before[n])}


@pytest.mark.slow
@pytest.mark.parametrize("method", ["kv", "crossattn", "lora"])
def test_sdxl_training_changes_only_the_chosen_tensors_and_the_new_rows(fresh_sdxl, dog_photos, method, tiny_cfg):
    lp = fresh_sdxl()
    pipe = lp.pipe
    assert family_of(pipe) is SDXL
    before = _snapshot(pipe)
    n_vocab = [len(pipe.tokenizer), len(pipe.tokenizer_2)]
    res = train_concepts(lp, [ConceptSpec(photos=str(dog_photos), token="[P]", class_word="dog")],
                         tiny_cfg(method=method, steps=2))
    c = res.concept
    # the UNet: exactly the method's tensors (K/V of every attn2, 2048-style context width 80 here)
    names = set(trainable_names(before["unet"], method))
    n_attn2 = sum(1 for n, _ in pipe.unet.named_modules() if n.endswith("attn2"))
    if method == "lora":
        assert _changed(before["unet"], pipe.unet) == set()  # base tensors frozen; adapters hold the change
        assert len(c.modules) == 2 * n_attn2 and c.layout == "lowrank"
        assert all(c.unet[f"{m}.lora_A"].shape[1] == 80 for m in c.modules if m.endswith("to_k"))
    else:
        per = {"kv": 2, "crossattn": 5}[method]  # k, v (+ q, out weight, out bias)
        assert len(names) == per * n_attn2
        assert _changed(before["unet"], pipe.unet) == names
        assert set(c.unet) == names
    # both text encoders: only the embedding's new row; every old row and other tensor bit-identical
    for k, (name, rows, tok) in enumerate([("text_encoder", c.embeddings, pipe.tokenizer),
                                          ("text_encoder_2", c.embeddings_2, pipe.tokenizer_2)]):
        te = getattr(pipe, name)
        emb_key = next(n for n in before[name] if "token_embedding" in n)
        assert _changed(before[name], te) <= {emb_key}
        w = te.get_input_embeddings().weight
        assert w.shape[0] == n_vocab[k] + 1
        assert torch.equal(w[: n_vocab[k]], before[name][emb_key])
        new_id = tok.convert_tokens_to_ids("[P]")
        assert new_id == n_vocab[k]
        assert torch.equal(w[new_id].float(), rows[0])  # the concept's row is the encoder's row
    assert c.family == "sdxl" and c.embeddings.shape == (1, 32) and c.embeddings_2.shape == (1, 48)


@pytest.mark.slow
def test_sdxl_unet_sees_each_photos_original_size_and_crop(fresh_sdxl, odd_photos, tiny_cfg):
    lp = fresh_sdxl()
    seen: list[torch.Tensor] = []
    pooled: list[tuple] = []

    def grab(module, args, kwargs):
        cond = kwargs["added_cond_kwargs"]
        seen.append(cond["time_ids"].detach().clone())
        pooled.append(tuple(cond["text_embeds"].shape))

    h = lp.pipe.unet.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        train_concepts(lp, [ConceptSpec(photos=str(odd_photos), token="[P]", class_word="dog")],
                       tiny_cfg(steps=4, batch_size=3, augment=False, flip_p=0.0, min_photo_px=64))
    finally:
        h.remove()
    rows = {tuple(int(v) for v in r) for t in seen for r in t}
    # (orig h, w) + center crop's top-left in the frame whose shorter side is 64 + (64, 64)
    expected = {(96, 64, 16, 0, 64, 64), (64, 80, 0, 8, 64, 64), (72, 72, 0, 0, 64, 64)}
    assert rows <= expected and len(rows) >= 2, rows
    assert set(pooled) == {(3, 32)}  # text_encoder_2's projection


def test_time_ids_follow_a_zoom_crop():
    """A zoomed crop moves the crop's top-left by its offset in the un-zoomed frame."""
    from lcd.train import data

    rng = np.random.default_rng(3)
    ex = data.at_size([data.Example(np.zeros((128, 64, 3), np.uint8), "a [P] dog", "x")], 64)
    assert ex[0].original_size == (128, 64) and ex[0].crop_top_left == (32, 0)
    _, _, _, ids = data.sample_batch(ex, 16, 64, rng, augmented=True, scale_range=(1.3, 1.4), flip_p=0.0)
    assert (ids[:, :2] == [128, 64]).all() and (ids[:, 4:] == 64).all()
    assert (ids[:, 2] >= 32).all() and (ids[:, 2:4] > [32, 0]).any()  # offsets added, never below the center crop


@pytest.mark.slow
def test_sdxl_prior_class_images_come_from_the_sdxl_pipeline_at_the_run_resolution(fresh_sdxl, dog_photos, tmp_path, tiny_cfg):
    lp = fresh_sdxl()
    res = train_concepts(lp, [ConceptSpec(photos=str(dog_photos), token="[P]", class_word="dog")],
                         tiny_cfg(steps=1, prior=True, num_class_images=2, class_image_steps=1), work_dir=tmp_path)
    pngs = sorted((tmp_path / "class_images").rglob("*.png"))
    assert len(pngs) == 2
    assert all(Image.open(p).size == (64, 64) for p in pngs)
    assert res.losses[0]["prior_loss"] > 0


@pytest.mark.slow
def test_sdxl_resume_is_exact_for_both_encoders(fresh_sdxl, dog_photos, tmp_path, tiny_cfg):
    spec = [ConceptSpec(photos=str(dog_photos), token="[P]", class_word="dog")]
    cfg = tiny_cfg(steps=2, checkpoint_every=1)
    a = train_concepts(fresh_sdxl(), spec, cfg, work_dir=tmp_path)
    b = train_concepts(fresh_sdxl(), spec, cfg, work_dir=tmp_path, resume=True)  # from step-1
    assert b.resumed_from == 1
    assert torch.equal(a.concept.embeddings, b.concept.embeddings)
    assert torch.equal(a.concept.embeddings_2, b.concept.embeddings_2)
    assert all(torch.equal(a.concept.unet[k], b.concept.unet[k]) for k in a.concept.unet)


@pytest.mark.slow
def test_sdxl_layer_analysis_covers_every_layer(fresh_sdxl, dog_photos, tiny_cfg):
    from lcd.train.analysis import analyze_layers, group_means

    lp = fresh_sdxl()
    names = [n for n, _ in lp.pipe.unet.named_parameters()]
    rows = analyze_layers(lp, ConceptSpec(photos=str(dog_photos), token="[P]", class_word="dog"),
                          tiny_cfg(steps=1))
    assert {r.layer for r in rows} == {n.rsplit(".", 1)[0] for n in names}
    n_attn2 = sum(1 for n, _ in lp.pipe.unet.named_modules() if n.endswith("attn2"))
    assert sum(r.group == "cross-attention" for r in rows) == 4 * n_attn2  # q, k, v, out of every attn2
    assert any("add_embedding" in r.layer for r in rows)  # SDXL's pooled/time-id embedding is a layer too
    assert all(np.isfinite(v) and v > 0 for v in group_means(rows).values())
