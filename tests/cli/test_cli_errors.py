"""Bad values on the command line: one line naming the option, exit 2, never a traceback."""

import numpy as np
import pytest
from PIL import Image

from lcd.cli import main


@pytest.fixture
def files(tmp_path):
    img, mask = tmp_path / "a.png", tmp_path / "m.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(img)
    Image.fromarray(np.full((64, 64), 255, np.uint8)).save(mask)
    (tmp_path / "bad.yaml").write_text("edit: [unclosed\n")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    (tmp_path / "results.parquet").write_bytes(b"PAR1" + bytes(range(256)) + b"PAR1")  # not UTF-8 (0xff)
    return tmp_path, ["edit", "--image", str(img), "--mask", str(mask), "--prompt", "a dog"]


def _edit(base, d, *extra, out="o.png"):
    return base + ["--out", str(d / out) if out else str(d), *extra]


def _diffusers_export(d, token_bytes: bytes, name: str = "<new1>.bin") -> list[str]:
    """A diffusers Custom Diffusion folder whose token embedding file holds `token_bytes`."""
    import torch
    from safetensors.torch import save_file

    f = d / "cd"
    f.mkdir(exist_ok=True)
    key = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor.to_k_custom_diffusion.weight"
    save_file({key: torch.zeros(4, 4)}, str(f / "pytorch_custom_diffusion_weights.safetensors"))
    (f / name).write_bytes(token_bytes)
    return ["concept", "import", str(f), "--out", str(d / "imported")]


def _concept_with_card(d, card: str) -> list[str]:
    import torch

    from lcd.concepts.io import Concept, save_concept

    save_concept(Concept(["[P]"], torch.zeros(1, 32), "kv", {}), d / "cc")
    (d / "cc" / "card.json").write_text(card)
    return ["concept", "export", str(d / "cc"), "--out", str(d / "exported")]


def _bomb(d) -> str:
    """A 1-bit PNG of 25000x25000: ~76 KB on disk, 625 MP decoded."""
    if not (d / "bomb.png").exists():
        Image.new("1", (25_000, 25_000)).save(d / "bomb.png")
    return str(d / "bomb.png")


def _masks(d, *extra):
    return ["masks", "compute", str(d / "scenes.csv"), "--out", str(d / "mo"), *extra]


CASES = [
    # (name, argv builder, text the one line must contain)
    ("steps", lambda d, b: _edit(b, d, "--steps", "0"), "--steps: Input should be greater than or equal to 1"),
    ("size", lambda d, b: _edit(b, d, "--size", "100"), "--size: Value error, size must be a multiple of 8 (the VAE downsamples by 8), got 100"),
    ("guidance", lambda d, b: _edit(b, d, "--guidance", "-1"), "--guidance:"),
    ("dilate", lambda d, b: _edit(b, d, "--dilate", "-5"), "--dilate:"),
    ("seed above int64", lambda d, b: _edit(b, d, "--seed", str(2**70)),
     "--seed: Input should be less than or equal to 9223372036854775807"),
    ("out is a folder", lambda d, b: b + ["--out", str(d / "sub.png")], "is a folder"),
    ("out not png", lambda d, b: _edit(b, d, out="e.jpg"), "name it .png or .webp"),
    ("out under a file", lambda d, b: _edit(b, d, out="a.png/o.png"), "a parent of it is a file"),
    ("bad yaml", lambda d, b: ["--params", str(d / "bad.yaml")] + _edit(b, d), "not valid YAML (line 2"),
    ("yaml not a mapping", lambda d, b: ["--params", str(d / "list.yaml")] + _edit(b, d), "must be a mapping"),
    ("missing params", lambda d, b: ["--params", str(d / "nope.yaml")] + _edit(b, d), "nope.yaml: params file not found"),
    ("params after subcommand", lambda d, b: b[:1] + ["--params", str(d / "nope.yaml")] + _edit(b, d)[1:],
     "nope.yaml: params file not found"),
    ("device bogus", lambda d, b: _edit(b, d, "--device", "bogus"), "device 'bogus' is not a torch device"),
    ("device cuda", lambda d, b: _edit(b, d, "--device", "cuda"), "PyTorch sees no CUDA GPU"),
    ("train steps", lambda d, b: ["train", "--photos", str(d), "--class-word", "dog", "--out", str(d / "c"),
                                  "--steps", "0"], "--steps:"),
    ("train resolution", lambda d, b: ["train", "--photos", str(d), "--class-word", "dog", "--out", str(d / "c"),
                                       "--resolution", "100"], "--resolution:"),
    ("train lr", lambda d, b: ["train", "--photos", str(d), "--class-word", "dog", "--out", str(d / "c"),
                               "--lr", "-1"], "--lr: Input should be greater than 0"),
    ("points per side 0", lambda d, b: _masks(d, "--points-per-side", "0"),
     "--points-per-side: Input should be greater than or equal to 1 (got 0"),
    ("points per side negative", lambda d, b: _masks(d, "--points-per-side", "-4"), "--points-per-side:"),
    ("n-prompts 0", lambda d, b: ["evaluate", "dreambench", "--out", str(d / "ev"), "--n-prompts", "0"],
     "--n-prompts: Input should be greater than or equal to 1 (got 0"),
    ("n-prompts 26", lambda d, b: ["evaluate", "dreambench", "--out", str(d / "ev"), "--n-prompts", "26"],
     "--n-prompts: Input should be less than or equal to 25"),
    ("import corrupt token .bin", lambda d, b: _diffusers_export(d, b"\x80\x02garbage"),
     "<new1>.bin: cannot read the token embedding file: "),
    ("import corrupt token .safetensors", lambda d, b: _diffusers_export(d, b"\x08\x00\x00\x00\x00\x00\x00\x00{}",
                                                                        "<new1>.safetensors"),
     "<new1>.safetensors: cannot read the token embedding file: "),
    ("export card not json", lambda d, b: _concept_with_card(d, "{not json"), "card.json: card is not readable JSON"),
    ("export card base not object", lambda d, b: _concept_with_card(d, '{"base": "sd15"}'),
     "card.json: card field 'base' must be a JSON object, got str"),
    ("show card not an object", lambda d, b: ["concept", "show", _concept_with_card(d, "[1, 2]")[2]],
     "card.json: card must be a JSON object, got list"),
    ("image bomb", lambda d, b: ["edit", "--image", _bomb(d)] + b[3:] + ["--out", str(d / "o.png")],
     "bomb.png: 25000x25000 is 625 MP, above the limit of 200 MP"),  # one line: no Pillow warning before it
    ("concept /dev", lambda d, b: _edit(b, d, "--concept", "/dev"), "/dev: not a concept folder (no concept.safetensors)"),
    ("concept a file", lambda d, b: _edit(b, d, "--concept", str(d / "a.png")), "a.png: not a concept folder"),
    ("manifest is binary", lambda d, b: ["evaluate", "edits", "--manifest", str(d / "results.parquet"),
                                         "--out", str(d / "ev")], "results.parquet: not valid JSON"),
    ("mask a directory", lambda d, b: _edit(["edit", "--image", str(d / "a.png"), "--mask", str(d / "sub.png"),
                                             "--prompt", "a dog"], d), "sub.png: is a directory, not an image file"),
]


@pytest.mark.parametrize("name,argv,needle", CASES, ids=[c[0] for c in CASES])
def test_bad_value_is_one_line_naming_it(files, capsys, name, argv, needle):
    d, base = files
    (d / "sub.png").mkdir(exist_ok=True)
    rc = main(argv(d, base))
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("lcd ") and needle in err, err
    assert not (d / "o.png").exists()


def test_params_after_the_subcommand_is_read(files, capsys, tmp_path):
    d, base = files
    (d / "p.yaml").write_text("edit:\n  steps: 0\n")
    assert main(base[:1] + ["--params", str(d / "p.yaml")] + _edit(base, d)[1:]) == 2
    assert "edit.steps" in capsys.readouterr().err  # the file's own value was validated


def test_a_value_the_message_already_names_is_not_repeated(files, capsys):
    d, base = files
    assert main(_edit(base, d, "--size", "100")) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("got 100") and err.count("100") == 1, err  # was "..., got 100 (got 100)"
