"""One bad item never sinks a shard, and a broken result is never recorded "edited".

Each broken concept sits in the same shard as good items (one with no concept, one with a good
LoRA concept): the good ones are edited, the bad one is a failure row naming the concept file and
the reason, the tables count it, and a re-run skips the good items and fails the bad one again.
What validation cannot foresee (an unexpected exception in one item's step) is a failure row
with the exception's type. A model or concept that passes every check but yields NaN or one
colour is that item's failure, with no output written."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import lcd.jobs.editing as editing
from lcd.config import EditConfig, ModelsConfig
from lcd.jobs import tables
from lcd.jobs.editing import default_loader, run_edit_shard
from lcd.jobs.manifest import read_manifest

CFG = EditConfig(steps=2, size=64, batch_size=3, dilate_px=1, feather_px=1)
SHARD = "00000-of-00001"
D = 32
KV = [f"{b}.transformer_blocks.0.attn2.{p}" for b in ("down_blocks.1.attentions.0", "mid_block.attentions.0")
      for p in ("to_k", "to_v")]
M = KV[0]
A, B = f"unet.{M}.lora_A", f"unet.{M}.lora_B"


def lora(rank: int = 2, inp: int = D, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t = {"text.embeddings": torch.randn(1, D, generator=g) * 0.01}
    for m in KV:
        t[f"unet.{m}.lora_A"] = torch.randn(rank, inp, generator=g) * 0.01
        t[f"unet.{m}.lora_B"] = torch.randn(64, rank, generator=g) * 0.01
    return t


def meta(token: str, **kw) -> dict[str, str]:
    return {"tokens": json.dumps([token]), "method": "lora", "layout": "lowrank", "lora_scale": "0.5", **kw}


def write_concept(folder, tensors, metadata):
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "concept.safetensors"), metadata=metadata)


def _no(t: dict, key: str) -> dict:
    return {k: v for k, v in t.items() if k != key}


# concept name -> (tensors, metadata, what the failure's message must say); each token [X] is its own
DEFECTS = {
    "tokens_number": (lora(), meta("[X]", tokens="5"), "metadata 'tokens' must be a non-empty list"),
    "emb_0d": (lora() | {"text.embeddings": torch.tensor(0.5)}, meta("[X]"), "text.embeddings has shape ()"),
    "a_without_b": (_no(lora(), B), meta("[X]"), "lora_A has no"),
    "rank_mismatch": (lora() | {B: torch.zeros(64, 3)}, meta("[X]"), "lora_A has rank 2 but lora_B has rank 3"),
    "base_shape": (lora(inp=48), meta("[X]"), "concept LoRA gives shape (64, 48) but the base weight is (64, 32)"),
    "nan_values": (lora() | {A: torch.full((2, D), float("nan"))}, meta("[X]"), "non-finite values (NaN or inf)"),
    "scale_nan": (lora(), meta("[X]", lora_scale="nan"), "lora_scale nan is not a finite number"),
    "scale_1e308": (lora(), meta("[X]", lora_scale="1e308"), "lora_scale 1e+308 is not a finite number"),
    "int_dtype": (lora() | {B: torch.ones(64, 2, dtype=torch.int32)}, meta("[X]"), "has dtype I32"),
}


@pytest.fixture
def scene(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "s.png")
    return tmp_path


def _items(root, lines):
    (root / "m.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    items, bad = read_manifest(root / "m.jsonl")
    assert not bad
    return items


def _line(i: str, prompt: str = "a dog", concept: str | None = None) -> dict:
    d = {"id": i, "image": "s.png", "select": "box:4,4,20,20", "prompt": prompt}
    return d | ({"concept": concept} if concept else {})


def _run(root, items, **kw):
    """A shard as tasks/edit.py runs it: the report, then its tables."""
    rep = run_edit_shard(items, out_root=root / "out", cfg=CFG, shard=SHARD, concepts_root=root / "concepts", **kw)
    tables.write_shard_tables(root / "out", SHARD, rep.results, rep.failures, rep.hashes)
    return rep


def _failures_table(root) -> dict[str, dict]:
    t = tables.read_table(tables.shard_table_path(root / "out", "failures", SHARD), tables.FAILURES_SCHEMA)
    return {r["id"]: r for r in t.to_pylist()}


@pytest.mark.slow
def test_each_broken_concept_fails_its_item_and_the_good_items_beside_it_are_edited(scene, tiny_dir):
    root = scene
    write_concept(root / "concepts" / "good", lora(seed=3), meta("[G]"))
    for name, (tensors, metadata, _) in DEFECTS.items():
        write_concept(root / "concepts" / name, tensors, metadata)
    # a file safetensors itself refuses: a header promising 128 bytes of data that are not there
    header = json.dumps({"text.embeddings": {"dtype": "F32", "shape": [1, D], "data_offsets": [0, 128]}}).encode()
    (root / "concepts" / "truncated").mkdir()
    (root / "concepts" / "truncated" / "concept.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    bad = [*DEFECTS, "truncated"]
    lines = [_line("plain"), _line("lora", "a [G] dog", "good")] + [_line(f"bad-{n}", "a [X] dog", n) for n in bad]
    items = _items(root, lines)
    models = ModelsConfig(sd=str(tiny_dir / "sd"))

    rep = _run(root, items, models=models)
    assert rep.counts() == {"edited": 2, "skipped": 0, "failed": len(bad)}
    assert sorted(r["id"] for r in rep.results) == ["lora", "plain"]
    assert (root / "out" / "edits" / "plain.png").is_file() and (root / "out" / "edits" / "lora.png").is_file()
    fails = _failures_table(root)
    assert set(fails) == {f"bad-{n}" for n in bad}
    for name in bad:
        f = fails[f"bad-{name}"]
        reason = DEFECTS[name][2] if name in DEFECTS else "cannot read concept weights"
        assert f["stage"] == "concept" and f["error"] == "ModelLoadError", f
        assert reason in f["message"] and str(root / "concepts" / name) in f["message"], f
        assert "\n" not in f["message"]
        assert not (root / "out" / "edits" / f"bad-{name}.png").exists()

    # the re-run: the good items are current (nothing loads for them), the bad ones fail again
    loaded = []
    real = default_loader(models, CFG.scheduler)

    def loader(cdir):
        loaded.append(cdir.name if cdir else None)
        return real(cdir)

    again = _run(root, items, models=models, loader=loader)
    assert {r["id"]: r["status"] for r in again.results} == {"plain": "skipped", "lora": "skipped"}
    assert {f["id"]: f["message"] for f in again.failures} == {i: f["message"] for i, f in fails.items()}
    assert sorted(loaded) == sorted(bad)  # only the failed items' groups are tried again


@pytest.mark.slow
def test_a_concept_that_passes_every_check_but_yields_nan_is_a_failure_not_an_edit(scene, tiny_dir):
    """Finite but huge K/V weights (1e30, inside float32) overflow in attention: NaN latents,
    which used to be cast to a black region and recorded edited."""
    from lcd.concepts.io import Concept, save_concept

    root = scene
    save_concept(Concept(["[H]"], torch.zeros(1, D), "kv", {f"{m}.weight": torch.full((64, D), 1e30) for m in KV}),
                 root / "concepts" / "huge")
    items = _items(root, [_line("plain"), _line("h", "a [H] dog", "huge")])
    models = ModelsConfig(sd=str(tiny_dir / "sd"))
    for _ in range(2):  # and again on the re-run: a failure is never current
        rep = _run(root, items, models=models)
        assert [(r["id"], r["status"]) for r in rep.results] == [("plain", "skipped" if _ else "edited")]
        (f,) = rep.failures
        assert f["id"] == "h" and f["stage"] == "edit" and f["error"] == "EditResultError"
        assert f["message"] == "h: the edit produced NaN in the latents; the model or the concept is broken, nothing was saved"
        assert not (root / "out" / "edits" / "h.png").exists() and not (root / "out" / "regions" / "h.png").exists()


@pytest.mark.slow
def test_a_model_that_paints_one_colour_is_a_failure_not_an_edit(scene, tiny_dir):
    """A VAE whose decoder saturates (every pixel white): a constant region from a varied input."""
    root = scene
    items = _items(root, [_line("a"), _line("b", "a cat")])
    models = ModelsConfig(sd=str(tiny_dir / "sd"))
    real = default_loader(models, CFG.scheduler)

    def saturated(cdir):
        lp, tokens = real(cdir)
        with torch.no_grad():
            lp.pipe.vae.decoder.conv_out.weight.zero_()
            lp.pipe.vae.decoder.conv_out.bias.fill_(10.0)
        return lp, tokens

    rep = _run(root, items, models=models, loader=saturated)
    assert rep.counts() == {"edited": 0, "skipped": 0, "failed": 2}
    assert {f["error"] for f in rep.failures} == {"EditResultError"}
    assert all("the edit produced a constant region (every pixel (255, 255, 255)) from a region that was not"
               in f["message"] for f in rep.failures)
    assert not (root / "out" / "edits" / "a.png").exists()
    # the same model unbroken edits both (the rule does not misfire on the tiny random model)
    assert _run(root, items, models=models).counts() == {"edited": 2, "skipped": 0, "failed": 0}


def test_a_flat_input_region_is_never_judged_constant():
    from lcd.edit.result_checks import MIN_REGION_PX, constant_problem

    region = np.zeros((16, 16), bool)
    region[2:12, 2:12] = True
    varied = np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    flat = np.full((16, 16, 3), 7, np.uint8)
    assert "constant region (every pixel (7, 7, 7))" in str(constant_problem("x", flat, varied, region))
    assert constant_problem("x", flat, flat, region) is None  # a flat input: one colour may be right
    assert constant_problem("x", varied, varied, region) is None
    small = np.zeros((16, 16), bool)
    small[0, : MIN_REGION_PX // 16 - 1] = True
    assert constant_problem("x", flat, varied, small) is None  # a few pixels may well be one colour
    # a colour that varies in one channel only is not constant
    out = flat.copy()
    out[5, 5, 2] = 8
    assert constant_problem("x", out, varied, region) is None


def test_nonfinite_latents_or_pixels_are_named():
    from lcd.edit.result_checks import nonfinite_problem

    ok = torch.zeros(4, 8, 8)
    assert nonfinite_problem("x", ok, torch.zeros(3, 64, 64)) is None
    lat = ok.clone()
    lat[0, 0, 0] = float("inf")
    assert "the edit produced inf in the latents" in str(nonfinite_problem("x", lat, torch.zeros(3, 64, 64)))
    px = torch.zeros(3, 64, 64)
    px[1, 2, 3] = float("nan")
    assert "the edit produced NaN in the decoded pixels" in str(nonfinite_problem("x", ok, px))


# --- the catch-all: what validation cannot foresee fails one item, by its type ----------------

def test_an_unexpected_exception_reading_one_item_is_its_failure_row_with_its_type(scene, monkeypatch):
    root = scene
    items = _items(root, [_line("a"), _line("odd"), _line("c")])
    real = editing.load_region

    def load_region(it, *args, **kw):
        if it.id == "odd":
            raise RuntimeError("something nobody foresaw\nwith a second line")
        return real(it, *args, **kw)

    monkeypatch.setattr(editing, "load_region", load_region)
    rep = _run(root, items, models=ModelsConfig(), engine="noop")
    assert sorted(r["id"] for r in rep.results) == ["a", "c"]
    (f,) = _failures_table(root).values()
    assert (f["id"], f["stage"], f["error"]) == ("odd", "input", "RuntimeError")
    assert f["message"] == "odd: unexpected RuntimeError: something nobody foresaw"


def test_an_unexpected_exception_writing_one_item_is_its_failure_row(scene, monkeypatch):
    root = scene
    items = _items(root, [_line("a"), _line("odd")])
    real = editing.save_output

    def save_output(path, *args, **kw):
        if "odd" in str(path):
            raise TypeError("an encoder bug")
        return real(path, *args, **kw)

    monkeypatch.setattr(editing, "save_output", save_output)
    rep = _run(root, items, models=ModelsConfig(), engine="noop")
    assert [r["id"] for r in rep.results] == ["a"]
    (f,) = rep.failures
    assert (f["id"], f["stage"], f["error"], f["message"]) == ("odd", "write", "TypeError",
                                                               "odd: unexpected TypeError: an encoder bug")


def test_a_loader_raising_anything_fails_that_concept_group_only(scene, tiny_dir):
    """A KeyError escaping the model load (not an LcdError) used to escape the shard."""
    root = scene
    for name in ("odd", "good"):
        write_concept(root / "concepts" / name, lora(seed=5), meta("[G]"))
    items = _items(root, [_line("plain"), _line("o1", "a [G] dog", "odd"), _line("o2", "a [G] cat", "odd"),
                          _line("g", "a [G] dog", "good")])
    real = default_loader(ModelsConfig(sd=str(tiny_dir / "sd")), CFG.scheduler)

    def loader(cdir):
        if cdir is not None and cdir.name == "odd":
            raise KeyError("lora_B")
        return real(cdir)

    rep = _run(root, items, models=ModelsConfig(sd=str(tiny_dir / "sd")), loader=loader)
    assert sorted(r["id"] for r in rep.results if r["status"] == "edited") == ["g", "plain"]
    fails = {f["id"]: f for f in rep.failures}
    assert set(fails) == {"o1", "o2"}
    odd = str(root / "concepts" / "odd")
    for f in fails.values():
        assert (f["stage"], f["error"], f["item"]) == ("concept", "KeyError", odd)
        assert f["message"] == f"{odd}: unexpected KeyError: 'lora_B'"


def test_an_exception_escaping_a_groups_batches_fails_its_items_not_the_shard(scene, monkeypatch):
    root = scene
    items = _items(root, [_line("a"), _line("b")])

    def broken(*_):
        raise RuntimeError("no batch size")

    monkeypatch.setattr(editing, "_batch_size", broken)
    rep = _run(root, items, models=ModelsConfig(), engine="noop")
    assert rep.counts() == {"edited": 0, "skipped": 0, "failed": 2}
    assert {(f["id"], f["stage"], f["error"]) for f in rep.failures} == {("a", "edit", "RuntimeError"),
                                                                           ("b", "edit", "RuntimeError")}


def test_paths_that_are_not_utf8_are_manifest_failures_and_never_lose_the_shards_tables(scene):
    """A JSON path "t\\udcff.png" (a lone surrogate: a file of non-UTF-8 bytes) is refused by the
    manifest, naming the field (the plan, the tables and the PNG metadata hold UTF-8 text only).
    An item built in code past that check still cannot lose the shard's tables: pyarrow refused
    the surrogate in a row, so the table write raised and every row of the shard was lost."""
    import shutil

    from lcd.jobs.manifest import ManifestItem

    root = scene
    shutil.copy(root / "s.png", root / "t\udcff.png")  # the file name's bytes: b"t\xff.png"
    lines = [_line("a"), _line("odd") | {"image": "t\udcff.png"}, _line("gone") | {"image": "g\udcff.png"}]
    (root / "m.jsonl").write_text("\n".join(json.dumps(x) for x in lines))  # json escapes the surrogate
    items, bad = read_manifest(root / "m.jsonl")
    assert [it.id for it in items] == ["a"]
    assert {f.id for f in bad} == {"odd", "gone"}
    assert all("image is not UTF-8 text (a lone surrogate '\\udcff' at position 1)" in f.message for f in bad)
    odd = ManifestItem.model_construct(**(_line("odd") | {"image": str(root / "t\udcff.png"), "mask": None,
                                                          "concept": None, "seed": 0}))
    gone = ManifestItem.model_construct(**(_line("gone") | {"image": str(root / "g\udcff.png"), "mask": None,
                                                            "concept": None, "seed": 0}))
    rep = _run(root, items + [odd, gone], models=ModelsConfig(), engine="noop")  # writes the tables
    assert rep.counts() == {"edited": 2, "skipped": 0, "failed": 1}
    res = tables.read_table(tables.shard_table_path(root / "out", "results", SHARD), tables.RESULTS_SCHEMA)
    assert dict(zip(res.column("id").to_pylist(), res.column("image").to_pylist()))["odd"].endswith("t\\udcff.png")
    (f,) = _failures_table(root).values()
    assert f["id"] == "gone" and f["message"].endswith("g\\udcff.png: file not found"), f


def test_an_item_the_model_cannot_take_fails_alone_not_its_batch(scene, tiny_dir):
    """Fault injection on a real text encoder: it raises on one prompt's tokens. The batch of
    three is retried item by item: the other two are edited, as they would be alone."""
    root = scene
    items = _items(root, [_line("a"), _line("boom", "a boom dog"), _line("c", "a cat")])
    models = ModelsConfig(sd=str(tiny_dir / "sd"))
    real = default_loader(models, CFG.scheduler)

    def fragile(cdir):
        lp, tokens = real(cdir)
        enc = lp.pipe.text_encoder
        forward, boom = enc.forward, lp.pipe.tokenizer("boom", add_special_tokens=False).input_ids[0]

        def encode(input_ids, *a, **k):
            if (input_ids == boom).any():
                raise ValueError("the encoder cannot take this prompt")
            return forward(input_ids, *a, **k)

        enc.forward = encode
        return lp, tokens

    rep = _run(root, items, models=models, loader=fragile)
    assert sorted(r["id"] for r in rep.results if r["status"] == "edited") == ["a", "c"]
    (f,) = rep.failures
    assert (f["id"], f["stage"], f["error"]) == ("boom", "edit", "ValueError")
    assert f["message"] == "boom: unexpected ValueError: the encoder cannot take this prompt"


def test_failure_messages_are_one_line_and_say_when_nobody_foresaw_the_error():
    from lcd.errors import LcdError
    from lcd.jobs.editing import failure_message

    assert failure_message(LcdError("a.png: bad\n  header"), "x") == "a.png: bad header"
    assert failure_message(OSError(28, "No space left on device", "out/a.png"), "x") == \
        "[Errno 28] No space left on device: 'out/a.png'"
    assert failure_message(KeyError("lora_B"), "c/dog") == "c/dog: unexpected KeyError: 'lora_B'"
    assert failure_message(RuntimeError(""), "x") == "x: unexpected RuntimeError"
    assert len(failure_message(RuntimeError("y" * 1000 + "\nz"), "x")) < 340
