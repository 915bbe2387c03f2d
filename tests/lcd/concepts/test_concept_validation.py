"""Broken concept folders are refused where they enter, with one line naming the file and the
reason: by load_concept, `lcd concept show|list` and apply_concepts (the checks against the base
model), never by a TypeError / IndexError / KeyError / RuntimeError deep in torch. The shard side
(good items beside the bad one) is tests/lcd/jobs/test_shard_catch_all.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lcd.cli import main
from lcd.concepts.io import Concept, apply_concepts, load_concept, save_concept
from lcd.concepts.validate import check_against_base, check_concept
from lcd.errors import ModelLoadError

D = 32  # the tiny SD's text hidden size and cross_attention_dim
KV = [f"{b}.transformer_blocks.0.attn2.{p}" for b in ("down_blocks.1.attentions.0", "mid_block.attentions.0")
      for p in ("to_k", "to_v")]  # (64, 32) weights in the tiny UNet
M = KV[0]


def lora_tensors(rank: int = 2, out: int = 64, inp: int = D, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t = {"text.embeddings": torch.randn(1, D, generator=g) * 0.01}
    for m in KV:
        t[f"unet.{m}.lora_A"] = torch.randn(rank, inp, generator=g) * 0.01
        t[f"unet.{m}.lora_B"] = torch.randn(out, rank, generator=g) * 0.01
    return t


def lora_meta(**kw) -> dict[str, str]:
    return {"tokens": json.dumps(["[L]"]), "method": "lora", "layout": "lowrank", "lora_scale": "0.5", **kw}


def write_concept(folder: Path, tensors: dict, meta: dict, card: dict | None = None) -> Path:
    """A concept folder written straight through safetensors, so it can hold any defect."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "concept.safetensors"), metadata=meta)
    if card is not None:
        (folder / "card.json").write_text(json.dumps(card))
    return folder


def _without(t: dict, key: str) -> dict:
    return {k: v for k, v in t.items() if k != key}


def _with(t: dict, **kw) -> dict:
    return t | {k.replace("__", "."): v for k, v in kw.items()}


A, B = f"unet.{M}.lora_A", f"unet.{M}.lora_B"
# name -> (tensors, metadata, card, the reason the error must give); every one is refused from the file alone
FILE_DEFECTS = {
    "tokens_a_number": (lora_tensors(), lora_meta(tokens="5"), None, r"metadata 'tokens' must be a non-empty list"),
    "tokens_not_pseudo_words": (lora_tensors(), lora_meta(tokens='["dog"]'), None, r"concept token 'dog' must be"),
    "tokens_not_json": (lora_tensors(), lora_meta(tokens="[oops"), None, r"metadata 'tokens' is not JSON"),
    "tokens_nested_deep": (lora_tensors(), lora_meta(tokens="[" * 5000 + "]" * 5000), None,
                           r"metadata 'tokens' is not JSON"),
    "tokens_nested": (lora_tensors(), lora_meta(tokens="[" * 900 + "]" * 900), None, r"concept token \[\[\[.*must be"),
    "tokens_missing": (lora_tensors(), {"method": "lora", "layout": "lowrank"}, None, r"no 'tokens' metadata"),
    "embeddings_0d": (lora_tensors() | {"text.embeddings": torch.tensor(1.0)}, lora_meta(), None,
                      r"text.embeddings has shape \(\) but 1 token\(s\) need"),
    "embeddings_rows_not_tokens": (lora_tensors() | {"text.embeddings": torch.zeros(3, D)}, lora_meta(), None,
                                   r"text.embeddings has shape \(3, 32\) but 1 token"),
    "no_embeddings": (_without(lora_tensors(), "text.embeddings"), lora_meta(), None, r"no text.embeddings tensor"),
    "lora_A_without_lora_B": (_without(lora_tensors(), B), lora_meta(), None,
                              rf"{A} has no {B}; a LoRA update needs both"),
    "lora_B_without_lora_A": (_without(lora_tensors(), A), lora_meta(), None, rf"{B} has no {A}"),
    "rank_mismatch": (lora_tensors() | {B: torch.zeros(64, 3)}, lora_meta(), None,
                      r"lora_A has rank 2 but lora_B has rank 3"),
    "lora_3d": (lora_tensors() | {A: torch.zeros(2, D, 1)}, lora_meta(), None, r"lora_A and lora_B must be 2-d"),
    "rank_zero": (lora_tensors() | {A: torch.zeros(0, D), B: torch.zeros(64, 0)}, lora_meta(), None, r"is empty"),
    "nan_values": (lora_tensors() | {B: torch.full((64, 2), float("nan"))}, lora_meta(), None,
                   rf"non-finite values \(NaN or inf\) in {B}"),
    "inf_embedding": (lora_tensors() | {"text.embeddings": torch.full((1, D), float("inf"))}, lora_meta(), None,
                      r"non-finite values \(NaN or inf\) in text.embeddings"),
    "lora_scale_nan": (lora_tensors(), lora_meta(lora_scale="nan"), None, r"lora_scale nan is not a finite number"),
    "lora_scale_1e308": (lora_tensors(), lora_meta(lora_scale="1e308"), None, r"lora_scale 1e\+308 is not a finite"),
    "lora_scale_inf": (lora_tensors(), lora_meta(lora_scale="-inf"), None, r"lora_scale -inf is not a finite"),
    "lora_scale_text": (lora_tensors(), lora_meta(lora_scale="big"), None, r"lora_scale must be a number, got 'big'"),
    "int_tensor": (lora_tensors() | {A: torch.zeros(2, D, dtype=torch.int64)}, lora_meta(), None,
                   rf"{A} has dtype I64; concept weights must be floating point"),
    "bool_embedding": (lora_tensors() | {"text.embeddings": torch.ones(1, D, dtype=torch.bool)}, lora_meta(), None,
                       r"text.embeddings has dtype BOOL"),
    "unexpected_tensor": (lora_tensors() | {"vae.x": torch.zeros(2)}, lora_meta(), None, r"unexpected tensor 'vae.x'"),
    "kv_weight_3d": ({"text.embeddings": torch.zeros(1, D), f"unet.{M}.weight": torch.zeros(64, D, 1)},
                     lora_meta(method="kv", layout="full"), None, r"a cross-attention weight is 2-d"),
    "class_words_numbers": (lora_tensors(), lora_meta(), {"class_words": [1, 2]},
                            r"card.json: card field 'class_words' must be a list of words"),
    "base_ref_a_number": (lora_tensors(), lora_meta(), {"base": {"ref": 7}}, r"card field 'base.ref' must be a string"),
    "template_a_number": (lora_tensors(), lora_meta(), {"config": {"template": 3}},
                          r"card field 'config.template' must be a string"),
}


@pytest.mark.parametrize("name", sorted(FILE_DEFECTS))
def test_each_file_defect_is_one_line_naming_the_file_at_load_and_in_concept_show(name, tmp_path, capsys):
    tensors, meta, card, reason = FILE_DEFECTS[name]
    folder = write_concept(tmp_path / name, tensors, meta, card)
    with pytest.raises(ModelLoadError, match=reason) as e:
        load_concept(folder)
    assert str(folder) in str(e.value) and "\n" not in str(e.value)
    assert main(["concept", "show", str(folder)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert captured.out == "" and len(err) == 1 and str(folder) in err[0], err
    assert err[0].startswith("lcd concept: error: ")


def test_a_good_lora_concept_loads_shows_and_applies(tmp_path, capsys, fresh_sd):
    folder = write_concept(tmp_path / "good", lora_tensors(), lora_meta(), {"class_words": ["dog"]})
    c = load_concept(folder)
    assert c.tokens == ["[L]"] and c.lora_scale == 0.5 and len(c.modules) == len(KV)
    assert main(["concept", "show", str(folder)]) == 0
    assert json.loads(capsys.readouterr().out)["rank"] == 2
    lp = fresh_sd()
    before = dict(lp.pipe.unet.named_parameters())[f"{M}.weight"].detach().clone()
    apply_concepts(lp.pipe, [c])
    after = dict(lp.pipe.unet.named_parameters())[f"{M}.weight"]
    assert not torch.equal(before, after) and bool(torch.isfinite(after).all())


def test_concept_list_refuses_a_folder_holding_a_broken_concept_in_one_line(tmp_path, capsys):
    write_concept(tmp_path / "lib" / "good", lora_tensors(), lora_meta())
    write_concept(tmp_path / "lib" / "bad", _without(lora_tensors(), B), lora_meta())
    assert main(["concept", "list", str(tmp_path / "lib")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(tmp_path / "lib" / "bad") in err[0] and "lora_B" in err[0], err


def test_concept_show_subprocess_exits_2_without_traceback(tmp_path):
    folder = write_concept(tmp_path / "c", lora_tensors(), lora_meta(tokens="5"))
    r = subprocess.run([sys.executable, "-m", "lcd", "concept", "show", str(folder)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "metadata 'tokens'" in r.stderr


# --- checks against the base model (run by apply_concepts, before anything changes) ----------

BASE_DEFECTS = {
    "lora_in_features": (lora_tensors(inp=48), lora_meta(), r"concept LoRA gives shape \(64, 48\) but the base weight"),
    "lora_out_features": (lora_tensors(out=40), lora_meta(), r"concept LoRA gives shape \(40, 32\)"),
    "embedding_width": (lora_tensors() | {"text.embeddings": torch.zeros(1, 16)}, lora_meta(),
                        r"token embeddings have width 16 but the base text encoder has 32"),
    "kv_shape": ({"text.embeddings": torch.zeros(1, D), f"unet.{M}.weight": torch.zeros(64, 48)},
                 lora_meta(method="kv", layout="full"), r"concept shape \(64, 48\) but base shape \(64, 32\)"),
    "no_such_module": ({"text.embeddings": torch.zeros(1, D),
                        "unet.down_blocks.7.attentions.0.transformer_blocks.0.attn2.to_k.weight": torch.zeros(64, D)},
                       lora_meta(method="kv", layout="full"), r"base UNet has no parameter down_blocks.7"),
}


@pytest.mark.parametrize("name", sorted(BASE_DEFECTS))
def test_a_concept_for_another_base_is_refused_before_the_pipeline_changes(name, tmp_path, fresh_sd):
    tensors, meta, reason = BASE_DEFECTS[name]
    folder = write_concept(tmp_path / name, tensors, meta)
    c = load_concept(folder)  # the file alone is fine
    lp = fresh_sd()
    before = {k: v.detach().clone() for k, v in lp.pipe.unet.named_parameters() if "attn2" in k}
    n_tok = len(lp.pipe.tokenizer)
    with pytest.raises(ModelLoadError, match=reason) as e:
        apply_concepts(lp.pipe, [c])
    assert str(folder) in str(e.value)
    assert len(lp.pipe.tokenizer) == n_tok
    assert all(torch.equal(v, dict(lp.pipe.unet.named_parameters())[k]) for k, v in before.items())


def test_applied_weights_that_overflow_the_base_dtype_are_refused(fresh_sd):
    """fp16 holds 65504: a finite float32 update past it would become inf in the base."""
    lp = fresh_sd()
    unet16 = lp.pipe.unet.half()
    big = Concept(["[K]"], torch.zeros(1, D), "kv", {f"{M}.weight": torch.full((64, D), 1e6)}, name="big")
    with pytest.raises(ModelLoadError, match=r"big: unet\..*to_k.weight: the applied weights reach 1e\+06, past .*float16"):
        check_against_base(big, unet16, lp.pipe.text_encoder)
    t = lora_tensors()
    lora = Concept(["[L]"], t["text.embeddings"], "lora", {k[5:]: v * 1e4 for k, v in t.items() if k.startswith("unet.")},
                   lora_scale=100.0, name="loud")
    with pytest.raises(ModelLoadError, match=r"loud: unet\..*: the applied weights reach"):
        check_against_base(lora, unet16, lp.pipe.text_encoder)
    check_against_base(Concept(["[L]"], t["text.embeddings"], "lora",
                               {k[5:]: v for k, v in t.items() if k.startswith("unet.")}, lora_scale=1.0),
                       unet16, lp.pipe.text_encoder)  # an ordinary LoRA fits fp16


def test_in_memory_concepts_get_the_file_checks_too(fresh_sd):
    lp = fresh_sd()
    with pytest.raises(ModelLoadError, match=r"mem: metadata 'tokens' must be a non-empty list"):
        apply_concepts(lp.pipe, [Concept(5, torch.zeros(1, D), "kv", {}, name="mem")])  # type: ignore[arg-type]
    with pytest.raises(ModelLoadError, match=r"mem: lora_scale nan is not a finite number"):
        check_concept(Concept(["[L]"], torch.zeros(1, D), "lora", {}, lora_scale=float("nan"), name="mem"))
    with pytest.raises(ModelLoadError, match=r"mem: unet\..*lora_A has no .*lora_B"):
        check_concept(Concept(["[L]"], torch.zeros(1, D), "lora", {f"{M}.lora_A": torch.zeros(2, D)}, name="mem"))


def test_save_then_load_round_trips_a_checked_concept(tmp_path):
    t = lora_tensors()
    c = Concept(["[L]"], t["text.embeddings"], "lora", {k[5:]: v for k, v in t.items() if k.startswith("unet.")},
                lora_scale=0.25, card={"class_words": ["dog"]})
    back = load_concept(save_concept(c, tmp_path / "rt"))
    assert back.lora_scale == 0.25 and back.tokens == ["[L]"] and back.unet.keys() == c.unet.keys()


def _diffusers_folder(folder: Path, rows: dict[str, torch.Tensor]) -> Path:
    """What diffusers' train_custom_diffusion.py writes: K/V weights + one file per token."""
    folder.mkdir(parents=True)
    proc = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.processor"
    save_file({f"{proc}.to_k_custom_diffusion.weight": torch.zeros(64, D),
               f"{proc}.to_v_custom_diffusion.weight": torch.zeros(64, D)},
              str(folder / "pytorch_custom_diffusion_weights.safetensors"))
    for tok, row in rows.items():
        save_file({tok: row}, str(folder / f"{tok.strip('<>')}.safetensors"))
    return folder


def test_concept_import_refuses_what_load_would_refuse_in_one_line(tmp_path, capsys):
    good = _diffusers_folder(tmp_path / "d", {"<new1>": torch.zeros(D)})
    assert main(["concept", "import", str(good), "--out", str(tmp_path / "ok")]) == 0
    assert load_concept(tmp_path / "ok").tokens == ["[new1]"]
    capsys.readouterr()
    # our name for the token is not a pseudo-word: refused, nothing written
    assert main(["concept", "import", str(good), "--out", str(tmp_path / "no"), "--token", "dog"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "concept token 'dog' must be a string like [NAME]" in err[0], err
    assert not (tmp_path / "no").exists()
    # two token files of different widths used to be a RuntimeError from torch.stack
    mixed = _diffusers_folder(tmp_path / "m", {"<a>": torch.zeros(D), "<b>": torch.zeros(16)})
    assert main(["concept", "import", str(mixed), "--out", str(tmp_path / "mixed")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "rows of different widths ([16, 32])" in err[0] and str(mixed) in err[0], err
    ints = _diffusers_folder(tmp_path / "i", {"<a>": torch.zeros(D)})
    save_file({"x.processor.to_k_custom_diffusion.weight": torch.zeros(64, D, dtype=torch.int32)},
              str(ints / "pytorch_custom_diffusion_weights.safetensors"))
    with pytest.raises(ModelLoadError, match=r"to_k_custom_diffusion.weight has dtype int32; weights must be floating"):
        from lcd.concepts.io import import_diffusers

        import_diffusers(ints)
