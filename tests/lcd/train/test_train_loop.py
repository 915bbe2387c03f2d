"""Training on the tiny SD: only intended tensors change, loss falls, exact resume, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lcd.concepts.io import add_tokens, apply_concepts, load_concept, save_concept
from lcd.errors import InputImageError, LcdError, ModelLoadError, PromptError
from lcd.train import data
from lcd.train.config import ConceptSpec, TrainConfig
from lcd.train.loop import TrainingError, concept_loss, train_concepts


def _state(pipe) -> dict[str, torch.Tensor]:
    out = {}
    for comp in ("unet", "vae", "text_encoder"):
        for n, p in getattr(pipe, comp).state_dict().items():
            out[f"{comp}.{n}"] = p.detach().clone()
    return out


def _changed(before, after) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k])}


def _spec(photos, token="[P]"):
    return ConceptSpec(photos=str(photos), token=token, class_word="dog")


def test_kv_training_changes_only_kv_and_the_new_row(fresh_sd, dog_photos, tiny_cfg, generate, tmp_path):
    lp = fresh_sd()
    before = _state(lp.pipe)
    vocab = len(lp.pipe.tokenizer)
    res = train_concepts(lp, [_spec(dog_photos)], tiny_cfg(steps=2))
    after = _state(lp.pipe)
    emb = "text_encoder.text_model.embeddings.token_embedding.weight"
    assert after[emb].shape[0] == vocab + 1
    assert torch.equal(after[emb][:vocab], before[emb])  # every old row bit-identical
    after[emb] = after[emb][:vocab]
    changed = _changed(before, after)
    assert changed and all(".attn2.to_k." in k or ".attn2.to_v." in k for k in changed)
    kv = {k for k in before if k.startswith("unet.") and (".attn2.to_k." in k or ".attn2.to_v." in k)}
    assert changed == kv  # all K/V layers trained, nothing else
    assert set(res.concept.unet) == {k[len("unet."):] for k in kv}
    # save -> load into a fresh pipeline -> the same image as the trained pipeline in memory
    save_concept(res.concept, tmp_path / "c")
    card = json.loads((tmp_path / "c" / "card.json").read_text())
    assert card["tokens"] == ["[P]"] and card["class_words"] == ["dog"] and len(card["photos"]) == 5
    assert card["base"]["sha256"] and card["config"]["steps"] == 2
    fresh = fresh_sd()
    apply_concepts(fresh.pipe, [load_concept(tmp_path / "c")])
    a, b = generate(lp.pipe, "a photo of [P] dog"), generate(fresh.pipe, "a photo of [P] dog")
    np.testing.assert_array_equal(a, b)
    assert np.abs(generate(fresh_sd().pipe, "a photo of a dog") - a).max() > 1e-3


def test_loss_on_concept_photos_goes_down(fresh_sd, dog_photos, tiny_cfg):
    spec = _spec(dog_photos)
    exs = data.load_concept_photos(dog_photos, "[P]", "dog", TrainConfig().template, min_photos=3, min_px=32)
    x = np.stack([data.resize_square(e.image, 64).astype(np.float32).transpose(2, 0, 1) / 127.5 - 1 for e in exs])
    caps = [e.caption for e in exs]
    base = fresh_sd()
    add_tokens(base.pipe.tokenizer, base.pipe.text_encoder, ["[P]"],
               base.pipe.text_encoder.get_input_embeddings().weight[[base.pipe.tokenizer("dog", add_special_tokens=False).input_ids[0]]].detach())
    loss0 = concept_loss(base.pipe, x, caps)
    lp = fresh_sd()
    # a random tiny UNet responds weakly to K/V alone: a high lr and 15 steps give a ~2.5% drop;
    # noise and timesteps are fixed in concept_loss, so the comparison is deterministic
    train_concepts(lp, [spec], tiny_cfg(steps=15, augment=False, flip_p=0.0, lr=0.1))
    loss1 = concept_loss(lp.pipe, x, caps)
    assert loss1 < loss0 * 0.99, (loss0, loss1)


def test_crossattn_trains_q_k_v_out(fresh_sd, dog_photos, tiny_cfg):
    lp = fresh_sd()
    before = _state(lp.pipe)
    train_concepts(lp, [_spec(dog_photos)], tiny_cfg(steps=1, method="crossattn"))
    after = _state(lp.pipe)
    after.pop("text_encoder.text_model.embeddings.token_embedding.weight")
    before.pop("text_encoder.text_model.embeddings.token_embedding.weight")
    changed = _changed(before, after)
    assert {k.split(".attn2.")[1].rsplit(".", 1)[0] for k in changed} == {"to_q", "to_k", "to_v", "to_out.0"}
    assert all(".attn2." in k for k in changed)


def test_lora_trains_adapters_only_and_round_trips(fresh_sd, dog_photos, tiny_cfg, generate, tmp_path):
    lp = fresh_sd()
    base_kv = {n: p.detach().clone() for n, p in lp.pipe.unet.named_parameters()}
    res = train_concepts(lp, [_spec(dog_photos)], tiny_cfg(steps=2, method="lora", lora_rank=2))
    now = {n.replace(".base_layer", ""): p for n, p in lp.pipe.unet.named_parameters() if "lora_" not in n}
    assert all(torch.equal(base_kv[n], now[n]) for n in base_kv)  # base weights untouched
    assert res.concept.method == "lora" and all(k.endswith(("lora_A", "lora_B")) for k in res.concept.unet)
    assert res.concept.unet[next(k for k in res.concept.unet if k.endswith("lora_B"))].abs().sum() > 0
    save_concept(res.concept, tmp_path / "c")
    fresh = fresh_sd()
    apply_concepts(fresh.pipe, [load_concept(tmp_path / "c")])  # merged into the base K/V weights
    np.testing.assert_allclose(generate(fresh.pipe, "a photo of [P] dog"), generate(lp.pipe, "a photo of [P] dog"), atol=1e-4)


def test_multi_concept_learns_two_tokens(fresh_sd, dog_photos, tiny_cfg):
    lp = fresh_sd()
    res = train_concepts(lp, [_spec(dog_photos, "[P]"), ConceptSpec(photos=str(dog_photos), token="[Q]", class_word="cat")],
                         tiny_cfg(steps=1, batch_size=2))
    assert res.concept.tokens == ["[P]", "[Q]"] and res.concept.embeddings.shape[0] == 2
    assert res.concept.card["class_words"] == ["dog", "cat"]
    ids = lp.pipe.tokenizer.convert_tokens_to_ids(["[P]", "[Q]"])
    dog = lp.pipe.tokenizer("dog", add_special_tokens=False).input_ids[0]
    w = lp.pipe.text_encoder.get_input_embeddings().weight
    assert not torch.equal(w[ids[0]], w[dog])  # trained away from its init


def test_resume_matches_an_uninterrupted_run(fresh_sd, dog_photos, tiny_cfg, tmp_path):
    cfg = tiny_cfg(steps=4, checkpoint_every=2, prior=True, num_class_images=2, class_image_steps=1)
    full = train_concepts(fresh_sd(), [_spec(dog_photos)], cfg, work_dir=tmp_path / "a")

    class Stop(Exception):
        pass

    def stop_at_3(step, loss):
        if step == 3:
            raise Stop

    with pytest.raises(Stop):
        train_concepts(fresh_sd(), [_spec(dog_photos)], cfg, work_dir=tmp_path / "b", on_step=stop_at_3)
    cached = {p: p.stat().st_mtime_ns for p in (tmp_path / "b" / "class_images").rglob("*.png")}
    assert (tmp_path / "b" / "checkpoints" / "step-000002").exists()
    res = train_concepts(fresh_sd(), [_spec(dog_photos)], cfg, work_dir=tmp_path / "b", resume=True)
    assert res.resumed_from == 2
    assert torch.equal(full.concept.embeddings, res.concept.embeddings)
    assert all(torch.equal(full.concept.unet[k], res.concept.unet[k]) for k in full.concept.unet)
    assert [r["loss"] for r in full.losses] == [r["loss"] for r in res.losses]
    lines = (tmp_path / "b" / "losses.csv").read_text().splitlines()
    assert lines[0] == "step,loss,instance_loss,prior_loss" and len(lines) == 5
    # class images were generated once and reused from the cache on resume
    assert len(cached) == 2
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "b" / "class_images").rglob("*.png")} == cached


def test_resume_with_other_settings_is_refused(fresh_sd, dog_photos, tiny_cfg, tmp_path):
    train_concepts(fresh_sd(), [_spec(dog_photos)], tiny_cfg(steps=2, checkpoint_every=1), work_dir=tmp_path)
    with pytest.raises(LcdError, match="different training settings"):
        train_concepts(fresh_sd(), [_spec(dog_photos)], tiny_cfg(steps=2, checkpoint_every=1, lr=0.5),
                       work_dir=tmp_path, resume=True)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(fresh_sd, dog_photos, tiny_cfg, tmp_path):
    lp = fresh_sd()

    def poison(step, loss):
        if step == 2:
            with torch.no_grad():
                next(p for n, p in lp.pipe.unet.named_parameters() if n.endswith("attn2.to_k.weight")).fill_(float("nan"))

    with pytest.raises(TrainingError, match=r"loss is nan at step 3.*step-000002"):
        train_concepts(lp, [_spec(dog_photos)], tiny_cfg(steps=4, checkpoint_every=1), work_dir=tmp_path, on_step=poison)
    assert (tmp_path / "checkpoints" / "step-000002" / "trainable.safetensors").exists()
    assert not (tmp_path / "checkpoints" / "step-000003").exists()


def test_reg_set_layouts(tmp_path, dog_photos):
    # diffusers --real_prior layout
    files = sorted(dog_photos.glob("*.jpg"))[:2]
    (tmp_path / "r1").mkdir()
    (tmp_path / "r1" / "images.txt").write_text("\n".join(str(f) for f in files))
    (tmp_path / "r1" / "caption.txt").write_text("a dog on grass\na dog on a sofa\n")
    r1 = data.load_reg_set(tmp_path / "r1", "a photo of a dog")
    assert [e.caption for e in r1] == ["a dog on grass", "a dog on a sofa"]
    (tmp_path / "r2").mkdir()
    (tmp_path / "r2" / "manifest.jsonl").write_text(json.dumps({"image": str(files[0]), "caption": "x dog"}) + "\n")
    assert data.load_reg_set(tmp_path / "r2", "d")[0].caption == "x dog"
    (tmp_path / "r3").mkdir()
    (tmp_path / "r3" / "caption.txt").write_text("a\n")
    (tmp_path / "r3" / "images.txt").write_text("a.jpg\nb.jpg\n")
    with pytest.raises(LcdError, match="images.txt has 2 lines but caption.txt 1"):
        data.load_reg_set(tmp_path / "r3", "d")
    with pytest.raises(InputImageError, match="regularization folder not found"):
        data.load_reg_set(tmp_path / "nope", "d")


def test_augmentation_mask_matches_placed_image():
    rng = np.random.default_rng(0)
    img = np.full((80, 80, 3), 200, np.uint8)
    seen_small = False
    for _ in range(20):
        x, m, cap = data.augment(img, "a photo of [P] dog", 64, rng, scale_range=(0.4, 1.4), flip_p=0.5)
        assert x.shape == (3, 64, 64) and m.shape == (1, 8, 8)
        # pixels outside the mask are blank canvas (-1), inside are the photo
        up = np.kron(m[0], np.ones((8, 8)))
        assert np.all(x[:, up == 0] == -1.0) and np.all(x[:, up == 1] > 0)
        if m.sum() < 64 * 0.36:
            seen_small = True
            assert cap.startswith(data.SMALL_WORDS)
    assert seen_small


# --- bad input --------------------------------------------------------------------------------

def test_too_few_photos(fresh_sd, dog_photos, tiny_cfg):
    with pytest.raises(InputImageError, match="5 photo\\(s\\) found, at least 6"):
        train_concepts(fresh_sd(), [_spec(dog_photos)], tiny_cfg(min_photos=6))


def test_unreadable_photo(fresh_sd, dog_photos, tiny_cfg, tmp_path):
    for f in dog_photos.glob("*.jpg"):
        (tmp_path / f.name).write_bytes(f.read_bytes())
    (tmp_path / "05.jpg").write_text("not a jpeg")
    with pytest.raises(InputImageError, match="05.jpg: not an image file"):
        train_concepts(fresh_sd(), [_spec(tmp_path)], tiny_cfg())


def test_tiny_photo(fresh_sd, dog_photos, tiny_cfg):
    with pytest.raises(InputImageError, match="00.jpg: photo is 64x64, its shorter side must be at least 128"):
        train_concepts(fresh_sd(), [_spec(dog_photos)], tiny_cfg(min_photo_px=128))


def test_no_class_word(fresh_sd, dog_photos, tiny_cfg):
    with pytest.raises(LcdError, match="no class word given for concept \\[P\\]"):
        train_concepts(fresh_sd(), [ConceptSpec(photos=str(dog_photos), class_word=" ")], tiny_cfg())


def test_token_already_in_vocabulary(fresh_sd, dog_photos, tiny_cfg):
    lp = fresh_sd()
    lp.pipe.tokenizer.add_tokens(["[P]"])
    with pytest.raises(PromptError, match="token \\[P\\] is already in the tokenizer's vocabulary"):
        train_concepts(lp, [_spec(dog_photos)], tiny_cfg())
    with pytest.raises(PromptError, match="must look like \\[NAME\\]"):
        train_concepts(fresh_sd(), [_spec(dog_photos, token="sks")], tiny_cfg())


def test_duplicate_tokens_and_no_concepts(fresh_sd, dog_photos, tiny_cfg):
    with pytest.raises(LcdError, match="concept tokens must be distinct"):
        train_concepts(fresh_sd(), [_spec(dog_photos), _spec(dog_photos)], tiny_cfg())
    with pytest.raises(LcdError, match="no concept given"):
        train_concepts(fresh_sd(), [], tiny_cfg())


def test_concept_on_a_base_with_other_shapes(fresh_sd, dog_photos, tiny_cfg, tmp_path):
    res = train_concepts(fresh_sd(), [_spec(dog_photos)], tiny_cfg(steps=1))
    k = next(iter(res.concept.unet))
    res.concept.unet[k] = torch.zeros(7, 5)
    lp = fresh_sd()
    with pytest.raises(ModelLoadError, match=r"concept shape \(7, 5\) but base shape \(\d+, \d+\)"):
        apply_concepts(lp.pipe, [res.concept])
    assert "[P]" not in lp.pipe.tokenizer.get_vocab()  # nothing applied


def test_optional_and_device_choices_fail_early(fresh_sd, dog_photos, tiny_cfg):
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        with pytest.raises(TrainingError, match="use_8bit_adam needs bitsandbytes"):
            train_concepts(fresh_sd(), [_spec(dog_photos)], tiny_cfg(use_8bit_adam=True))
    with pytest.raises(TrainingError, match="fp16 needs a CUDA device"):
        train_concepts(fresh_sd(), [_spec(dog_photos)], tiny_cfg(mixed_precision="fp16"))


def test_config_rejects_bad_values():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="multiple of 8"):
        TrainConfig(resolution=100)
    with pytest.raises(ValidationError, match="must contain \\{token\\}"):
        TrainConfig(template="a photo of a dog")
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        TrainConfig(learning_rate=1.0)


def test_checkpointing_bf16_and_validation_images(fresh_sd, dog_photos, tiny_cfg, tmp_path):
    from lcd.io.images import read_png_meta

    res = train_concepts(fresh_sd(), [_spec(dog_photos)],
                         tiny_cfg(steps=1, gradient_checkpointing=True, mixed_precision="bf16", validate_every=1,
                                  validation_steps=1), work_dir=tmp_path)
    assert np.isfinite(res.losses[0]["loss"])
    png = tmp_path / "validation" / "step-000001.png"
    assert read_png_meta(png)["prompt"] == "a photo of [P] dog on a beach"


def test_per_photo_captions(dog_photos, tmp_path):
    for f in dog_photos.glob("*.jpg"):
        (tmp_path / f.name).write_bytes(f.read_bytes())
    (tmp_path / "00.txt").write_text("[P] dog asleep on a rug")
    exs = data.load_concept_photos(tmp_path, "[P]", "dog", TrainConfig().template, min_photos=3, min_px=32)
    assert exs[0].caption == "[P] dog asleep on a rug" and exs[1].caption == "a photo of [P] dog"
    (tmp_path / "01.txt").write_text("a dog asleep")
    with pytest.raises(LcdError, match="01.txt: caption 'a dog asleep' does not contain the concept token"):
        data.load_concept_photos(tmp_path, "[P]", "dog", TrainConfig().template, min_photos=3, min_px=32)


def test_reg_set_from_lcd_regset_output(tmp_path, dog_photos, fresh_sd, tiny_cfg):
    from lcd.regset.manifest import RegsetEntry, write_regset

    files = sorted(dog_photos.glob("*.jpg"))[:3]
    entries = [RegsetEntry(file=f, caption=f"a dog number {i}", similarity=0.3, sha256="0" * 64, source="metadata",
                           url=f"http://127.0.0.1/{i}.jpg") for i, f in enumerate(files)]
    write_regset(tmp_path / "reg", entries, [], {})
    exs = data.load_reg_set(tmp_path / "reg", "a photo of a dog")
    assert [e.caption for e in exs] == ["a dog number 0", "a dog number 1", "a dog number 2"]
    assert exs[0].image.shape == (64, 64, 3)
    res = train_concepts(fresh_sd(), [_spec(dog_photos)], tiny_cfg(steps=1, prior=True, reg_dir=str(tmp_path / "reg")))
    assert res.losses[0]["prior_loss"] > 0
