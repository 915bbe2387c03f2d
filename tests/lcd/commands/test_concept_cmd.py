"""`lcd concept merge|compress|export|list|show` through lcd.cli.main on tiny concepts: outputs,
and bad input as exit 2 with one line naming the item."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from lcd.cli import main


@pytest.fixture(scope="module")
def setup(concept_set, tiny_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("concept-cmd")
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump({"models": {"sd": str(tiny_dir / "sd")}}))
    lib = root / "lib"
    for k in ("A", "B", "L"):
        shutil.copytree(concept_set[f"{k}_dir"], lib / k)
    captions = root / "captions.txt"
    captions.write_text("a photo of a cat\na red car on a street\n\na bowl of fruit on a table\n")
    return root, params, lib, captions


def _run(params, *argv) -> int:
    return main(["--params", str(params), "concept", *argv])


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_list_and_show(setup, capsys):
    _, params, lib, _ = setup
    assert _run(params, "list", str(lib)) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["name", "tokens", "class_words", "method", "layout", "rank", "base", "bytes"]
    rows = {ln.split()[0]: ln.split() for ln in lines[1:]}
    assert rows["A"][1:6] == ["[P]", "dog", "kv", "full", "full"] and rows["L"][1:6] == ["[L]", "dog", "lora", "lowrank", "2"]
    base = json.loads((lib / "B" / "card.json").read_text())["base"]
    assert rows["B"][6] == f"{base['ref']}@{base['sha256'][:12]}"
    assert _run(params, "show", str(lib / "L")) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["tokens"] == ["[L]"] and s["rank"] == 2 and s["layers"] == 12 and set(s["ranks"].values()) == {2}
    assert s["bytes"] == (lib / "L" / "concept.safetensors").stat().st_size and s["base"]["sha256"]


def test_merge_compress_export(setup, capsys, tmp_path):
    root, params, lib, captions = setup
    merged = tmp_path / "AB"
    assert _run(params, "merge", str(lib / "A"), str(lib / "B"), "--out", str(merged), "--captions", str(captions),
                "--template", "a photo of {token} {class_word}") == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["tokens"] == ["[P]", "[Q]"] and out["reg_captions"] == 3
    small = tmp_path / "AB-small"
    assert _run(params, "compress", str(merged), "--energy", "0.6", "--out", str(small)) == 0
    comp = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert comp["energy_kept"] >= 0.6 and 1 <= comp["min_rank"] <= comp["max_rank"] < 32
    card = json.loads((small / "card.json").read_text())
    assert card["compression"]["energy"] == 0.6 and card["layout"] == "lowrank" and len(card["merged_from"]) == 2
    assert _run(params, "export", str(small), "--format", "kohya", "--out", str(tmp_path / "k")) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    res = json.loads(lines[-1])
    words = res["trigger_words"]
    assert sorted(words) == ["[P]", "[Q]"] and len(set(words.values())) == 2
    assert all(w.startswith("lcdbsmll") and w.endswith("qzx") for w in words.values())  # not 'P' / 'Q'
    assert lines[0].startswith("kohya: kohya LoRA read alike by diffusers") and res["exact"]
    assert lines[1] == f"a1111 prompt: <lora:AB-small:1> {words['[P]']} dog and {words['[Q]']} toy"
    assert lines[-3:-1] == [f"trigger [P]: {words['[P]']}", f"trigger [Q]: {words['[Q]']}"]
    assert (tmp_path / "k" / "lora" / "AB-small.safetensors").exists()
    assert (tmp_path / "k" / "embeddings" / f"{words['[Q]']}.safetensors").exists()
    manifest = json.loads((tmp_path / "k" / "lcd_export.json").read_text())
    assert [f["path"] for f in manifest["files"]] == ["lora/AB-small.safetensors"] + [
        f"embeddings/{words[t]}.safetensors" for t in ("[P]", "[Q]")]
    assert (small / "concept.safetensors").stat().st_size < (merged / "concept.safetensors").stat().st_size


def test_bad_input_is_one_line(setup, capsys, tmp_path):
    _, params, lib, captions = setup
    assert _run(params, "compress", str(lib / "A"), "--rank", "40", "--out", str(tmp_path / "x")) == 2
    assert "attn2.to_k: rank 40 is above this layer's rank 32" in _error_line(capsys)
    assert _run(params, "export", str(lib / "A"), "--format", "ckpt", "--out", str(tmp_path / "y")) == 2
    assert "format 'ckpt' is not one of diffusers, kohya, lycoris-full, a1111" in _error_line(capsys)
    shutil.copytree(lib / "A", tmp_path / "A2")
    assert _run(params, "merge", str(lib / "A"), str(tmp_path / "A2"), "--out", str(tmp_path / "m"),
                "--captions", str(captions)) == 2
    line = _error_line(capsys)
    assert f"token [P] is defined by both {lib / 'A'} and {tmp_path / 'A2'}" in line
    card = json.loads((tmp_path / "A2" / "card.json").read_text())
    card["base"] = {"ref": "someone/else", "sha256": "d" * 64}
    (tmp_path / "A2" / "card.json").write_text(json.dumps(card))
    assert _run(params, "merge", str(lib / "A"), str(tmp_path / "A2"), "--token", "[P]", "--token", "[R]",
                "--out", str(tmp_path / "m"), "--captions", str(captions)) == 2
    line = _error_line(capsys)
    assert f"{lib / 'A'} was trained on" in line and f"but {tmp_path / 'A2'} on someone/else (dddddddddddd)" in line
    assert not (tmp_path / "m").exists()
