"""SDXL concepts on the tiny SDXL (loaded by the production loader): the file keeps both text
encoders' rows and applies them to both; family and widths are checked in one line; merge,
compress and every export work on SDXL, read back by diffusers' own loaders; kohya SDXL LoRAs
(LDM key names) import where the layers are ours."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file, save_file

from lcd.concepts.export import LORA_DIR, MANIFEST_NAME, export_concept
from lcd.concepts.family import SDXL, diffusers_to_ldm, encode_prompts, ldm_to_diffusers
from lcd.concepts.io import Concept, apply_concepts, load_concept, save_concept
from lcd.concepts.kohya import import_kohya
from lcd.errors import LcdError, ModelLoadError

KV = (".attn2.to_k", ".attn2.to_v")


@pytest.fixture(scope="module")
def sdxl_dir(tiny_dir):
    return tiny_dir / "sdxl"


@pytest.fixture
def fresh(sdxl_dir):
    from lcd.models.loader import load_sd_pipeline

    return lambda: load_sd_pipeline(sdxl_dir).pipe


@pytest.fixture(scope="module")
def base(sdxl_dir):
    from lcd.models.loader import load_sd_pipeline

    return load_sd_pipeline(sdxl_dir).pipe  # read only


def _kv(unet) -> list[str]:
    return sorted(n for n, _ in unet.named_modules() if n.endswith(KV))


def _concept(unet, token="[P]", seed=0, lowrank=False) -> Concept:
    g = torch.Generator().manual_seed(seed)
    params = dict(unet.named_parameters())
    t = {}
    for m in _kv(unet):
        w0 = params[f"{m}.weight"].detach().float()
        if lowrank:
            t[f"{m}.lora_A"] = torch.randn(2, w0.shape[1], generator=g) * 0.1
            t[f"{m}.lora_B"] = torch.randn(w0.shape[0], 2, generator=g) * 0.1
        else:
            t[f"{m}.weight"] = w0 + 0.05 * torch.randn(w0.shape, generator=g)
    e1, e2 = torch.randn(1, 32, generator=g) * 0.02, torch.randn(1, 48, generator=g) * 0.02
    card = {"class_words": ["dog"], "config": {"lora_rank": 2, "lora_alpha": 3.0} if lowrank else {}}
    return Concept([token], e1, "lora" if lowrank else "kv", t, 1.5 if lowrank else 1.0, card, f"sdxl/{token[1:-1]}",
                   "lowrank" if lowrank else "full", e2)


def _applied(pipe, c: Concept) -> dict[str, torch.Tensor]:
    apply_concepts(pipe, [c])
    params = dict(pipe.unet.named_parameters())
    return {m: params[f"{m}.weight"].detach().double().clone() for m in _kv(pipe.unet)}


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], rtol=1e-5) -> None:
    assert set(a) == set(b)
    for k in a:
        assert float((a[k] - b[k]).abs().max()) <= rtol * float(a[k].abs().max()), k


def test_sdxl_concept_file_keeps_both_rows_and_applies_them_to_both_encoders(base, fresh, tmp_path):
    c = _concept(base.unet)
    loaded = load_concept(save_concept(c, tmp_path / "c"))
    assert loaded.family == "sdxl" and torch.equal(loaded.embeddings_2, c.embeddings_2)
    assert load_file(str(tmp_path / "c" / "concept.safetensors"))["text_2.embeddings"].shape == (1, 48)
    pipe = fresh()
    plain = encode_prompts(pipe, ["a photo of [P] dog"]).context
    apply_concepts(pipe, [loaded])
    for tok, te, rows in [(pipe.tokenizer, pipe.text_encoder, c.embeddings), (pipe.tokenizer_2, pipe.text_encoder_2,
                                                                             c.embeddings_2)]:
        assert torch.equal(te.get_input_embeddings().weight[tok.convert_tokens_to_ids("[P]")], rows[0])
    cond = encode_prompts(pipe, ["a photo of [P] dog"])
    assert cond.context.shape == (1, 77, 80) and cond.pooled.shape == (1, 32)
    assert not torch.allclose(cond.context, plain)  # the token now means its rows, in both halves
    assert not torch.allclose(cond.context[..., 32:], plain[..., 32:])


def test_family_and_widths_are_checked_in_one_line(base, fresh, tiny_sd, tmp_path):
    c = _concept(base.unet)
    with pytest.raises(ModelLoadError, match=r"is for SD1\.5 \(1 text encoder\(s\)\) but the base model is SDXL"):
        apply_concepts(fresh(), [replace(c, embeddings_2=None)])
    with pytest.raises(ModelLoadError, match=r"is for SDXL .* but the base model is SD1\.5"):
        apply_concepts(tiny_sd.pipe, [c])
    with pytest.raises(ModelLoadError, match="second text encoder's token embeddings have width 40 but the base"):
        apply_concepts(fresh(), [replace(c, embeddings_2=torch.zeros(1, 40))])
    # a file that says sdxl but lacks the second table, and an unknown family
    save_concept(c, tmp_path / "c")
    f = tmp_path / "c" / "concept.safetensors"
    sd = load_file(str(f))
    meta = {"tokens": json.dumps(["[P]"]), "method": "kv", "layout": "full", "family": "sdxl"}
    save_file({k: v for k, v in sd.items() if k != "text_2.embeddings"}, str(f), metadata=meta)
    with pytest.raises(ModelLoadError, match="an sdxl concept needs embedding tensors text.embeddings, text_2.embeddings"):
        load_concept(tmp_path / "c")
    save_file(sd, str(f), metadata=meta | {"family": "sd3"})
    with pytest.raises(ModelLoadError, match="metadata 'family' 'sd3' is not one of sd15, sdxl"):
        load_concept(tmp_path / "c")
    with pytest.raises(LcdError, match="an sdxl concept cannot be exported against an sd15 UNet"):
        export_concept(c, tiny_sd.pipe.unet, tmp_path / "x", "kohya")


@pytest.mark.slow
def test_sdxl_merge_keeps_each_concepts_outputs_on_its_prompts(base, fresh):
    from lcd.concepts.merge import DEFAULT_TEMPLATES, constraint_features, merge_concepts

    a, b = _concept(base.unet, "[A]", 1), _concept(base.unet, "[B]", 2)
    merged = merge_concepts(fresh(), [a, b], ["a photo of a dog", "a cat on a sofa", "a street at night"] * 4)
    assert merged.embeddings.shape == (2, 32) and merged.embeddings_2.shape == (2, 48)
    pipe = fresh()
    apply_concepts(pipe, [replace(merged, unet={})])  # tokens only: the features of each concept's prompts
    m = "up_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
    for c in (a, b):
        feats = constraint_features(pipe, c, DEFAULT_TEMPLATES).double()  # (k, 80): the 2048-like context
        assert feats.shape[1] == 80
        want, got = feats @ c.unet[f"{m}.weight"].double().T, feats @ merged.unet[f"{m}.weight"].double().T
        assert float((got - want).abs().max()) < 1e-4 * float(want.abs().max())


def test_sdxl_compress_is_the_svd_of_the_delta(base):
    from lcd.concepts.deltas import kv_deltas
    from lcd.concepts.lowrank import compress_concept

    c = _concept(base.unet)
    small = compress_concept(c, base.unet, rank=1)
    assert small.layout == "lowrank" and small.embeddings_2 is not None
    d, s = kv_deltas(c, base.unet), kv_deltas(small, base.unet)
    for m in d:
        best = torch.linalg.svd(d[m].double()).S[1:].pow(2).sum().sqrt()  # Eckart-Young: the rank-1 optimum
        assert abs(float((d[m].double() - s[m].double()).norm()) - float(best)) < 1e-4 * float(best)


def test_kohya_sdxl_names_are_the_single_files_ldm_paths(base):
    """Our SDXL kohya names are the original UNet's module paths: the same as the single-file
    writer's (lcd.models.ldm_format, diffusers' conversion inverted) for every attn2 K/V."""
    from lcd.models.ldm_format import unet_key_to_ldm

    mods = _kv(base.unet)
    names = {SDXL.kohya_name(m): m for m in mods}
    assert len(names) == len(mods)
    assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k" in names
    assert "lora_unet_middle_block_1_transformer_blocks_0_attn2_to_v" in names
    assert "lora_unet_output_blocks_2_1_transformer_blocks_1_attn2_to_k" in names
    cfg = dict(base.unet.config)
    for m in mods:
        assert unet_key_to_ldm(f"{m}.weight", cfg) == f"model.diffusion_model.{diffusers_to_ldm(m)}.weight"
        assert ldm_to_diffusers(diffusers_to_ldm(m)) == m


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["full", "lora"])
def test_sdxl_exports_load_in_diffusers_as_applied(base, fresh, tmp_path, kind):
    """kohya: diffusers' load_lora_weights installs W + scaling B A equal to apply_concepts'; the
    embedding file's clip_l / clip_g read by load_textual_inversion into each encoder; diffusers
    format: load_attn_procs installs the K/V weights; lycoris-full: the .diff keys in LDM naming."""
    c = _concept(base.unet, lowrank=kind == "lora")
    want = _applied(fresh(), c)
    res = export_concept(c, base.unet, tmp_path / "k", "kohya", tokenizer=base.tokenizer)
    assert res["exact"]
    sd = load_file(res["files"][0])
    assert all(k.startswith(("lora_unet_input_blocks_", "lora_unet_middle_block_", "lora_unet_output_blocks_"))
               for k in sd)
    pipe = fresh()
    pipe.load_lora_weights(str(tmp_path / "k" / LORA_DIR), weight_name=f"{c.name.split('/')[-1]}.safetensors")
    got = {}
    for name, mod in pipe.unet.named_modules():
        if name.endswith(KV):
            w = mod.base_layer.weight.detach().double()
            got[name] = w + mod.scaling["default_0"] * (mod.lora_B["default_0"].weight.detach().double()
                                                        @ mod.lora_A["default_0"].weight.detach().double())
    _close(want, got)
    # the embedding, into both encoders, as diffusers reads the two-encoder file
    (tok, word), = res["trigger_words"].items()
    emb = load_file(res["embeddings"][tok])
    assert set(emb) == {"clip_l", "clip_g"} and emb["clip_l"].shape == (1, 32) and emb["clip_g"].shape == (1, 48)
    pipe = fresh()
    pipe.load_textual_inversion(emb["clip_l"], token=word, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
    pipe.load_textual_inversion(emb["clip_g"], token=word, text_encoder=pipe.text_encoder_2,
                                tokenizer=pipe.tokenizer_2)
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[pipe.tokenizer.convert_tokens_to_ids(word)],
                       c.embeddings[0])
    assert torch.equal(pipe.text_encoder_2.get_input_embeddings().weight[pipe.tokenizer_2.convert_tokens_to_ids(word)],
                       c.embeddings_2[0])
    meta = json.loads((tmp_path / "k" / MANIFEST_NAME).read_text())
    assert "text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2" in meta["files"][1]["load"]["diffusers"]
    # diffusers' Custom Diffusion layout on the SDXL UNet
    export_concept(c, base.unet, tmp_path / "d", "diffusers")
    pipe = fresh()
    pipe.unet.load_attn_procs(str(tmp_path / "d"), weight_name="pytorch_custom_diffusion_weights.safetensors",
                              _pipeline=pipe)
    procs = pipe.unet.attn_processors
    got = {m: getattr(procs[m.rsplit(".", 1)[0] + ".processor"], m.rsplit(".", 1)[1] + "_custom_diffusion").weight
           .detach().double() for m in _kv(pipe.unet)}
    _close(want, got)
    # LyCORIS full: W - W0 under the same LDM names
    ly = load_file(export_concept(c, base.unet, tmp_path / "l", "lycoris-full")["files"][0])
    w0 = dict(base.unet.named_parameters())
    for m in _kv(base.unet):
        d = ly[f"{SDXL.kohya_name(m)}.diff"].double()
        assert float((w0[f"{m}.weight"].detach().double() + d - want[m]).abs().max()) <= 1e-5 * float(want[m].abs().max())


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["full", "lora"])
def test_kohya_sdxl_import_round_trip(base, fresh, tmp_path, kind):
    c = _concept(base.unet, lowrank=kind == "lora")
    res = export_concept(c, base.unet, tmp_path / "k", "kohya")
    (tok, _), = res["trigger_words"].items()
    back = import_kohya(res["files"][0], res["embeddings"][tok], base.unet, token="[Q]")
    assert back.family == "sdxl" and back.method == "lora"
    assert torch.equal(back.embeddings, c.embeddings) and torch.equal(back.embeddings_2, c.embeddings_2)
    _close(_applied(fresh(), c), _applied(fresh(), back))
    again = load_concept(save_concept(back, tmp_path / "imported"))  # a concept folder like any other
    _close(_applied(fresh(), c), _applied(fresh(), again))


def test_kohya_import_refuses_layers_that_are_not_ours(base, tmp_path):
    c = _concept(base.unet, lowrank=True)
    res = export_concept(c, base.unet, tmp_path / "k", "kohya")
    emb = next(iter(res["embeddings"].values()))
    sd = load_file(res["files"][0])
    for extra in ("lora_te1_text_model_encoder_layers_0_self_attn_q_proj",
                  "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"):
        bad = tmp_path / f"{extra[:12]}.safetensors"
        save_file(sd | {f"{extra}.lora_down.weight": torch.zeros(2, 32), f"{extra}.lora_up.weight": torch.zeros(32, 2)},
                  str(bad))
        with pytest.raises(ModelLoadError, match=rf"{extra}\.lora_(down|up)\.weight and 1 more is not a cross-attention K/V"):
            import_kohya(bad, emb, base.unet)
    save_file({"emb_params": torch.zeros(1, 32)}, str(tmp_path / "sd15.safetensors"))
    with pytest.raises(ModelLoadError, match="an embedding for this base needs clip_l and clip_g"):
        import_kohya(res["files"][0], tmp_path / "sd15.safetensors", base.unet)


def test_kohya_import_sd15_names_and_embedding(fresh_sd, tmp_path):
    """The same import on SD1.5: diffusers-path kohya names and the one-tensor embedding file."""
    pipe = fresh_sd().pipe
    params = dict(pipe.unet.named_parameters())
    g = torch.Generator().manual_seed(5)
    t = {f"{m}.weight": params[f"{m}.weight"].detach().float() + 0.05 * torch.randn(params[f"{m}.weight"].shape,
                                                                                     generator=g)
         for m in _kv(pipe.unet)}
    c = Concept(["[P]"], torch.randn(1, 32, generator=g) * 0.02, "kv", t, 1.0, {"class_words": ["dog"]}, "sd15/dog")
    res = export_concept(c, pipe.unet, tmp_path / "k", "kohya")
    assert all(k.startswith("lora_unet_down_blocks_") or k.startswith(("lora_unet_mid_block_", "lora_unet_up_blocks_"))
               for k in load_file(res["files"][0]))
    back = import_kohya(res["files"][0], next(iter(res["embeddings"].values())), pipe.unet)
    assert back.family == "sd15" and torch.equal(back.embeddings, c.embeddings)
    _close(_applied(fresh_sd().pipe, c), _applied(fresh_sd().pipe, back))
