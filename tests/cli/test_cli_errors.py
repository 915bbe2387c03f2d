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
    return tmp_path, ["edit", "--image", str(img), "--mask", str(mask), "--prompt", "a dog"]


def _edit(base, d, *extra, out="o.png"):
    return base + ["--out", str(d / out) if out else str(d), *extra]


CASES = [
    # (name, argv builder, text the one line must contain)
    ("steps", lambda d, b: _edit(b, d, "--steps", "0"), "--steps: Input should be greater than or equal to 1"),
    ("size", lambda d, b: _edit(b, d, "--size", "100"), "--size:"),
    ("guidance", lambda d, b: _edit(b, d, "--guidance", "-1"), "--guidance:"),
    ("dilate", lambda d, b: _edit(b, d, "--dilate", "-5"), "--dilate:"),
    ("out is a folder", lambda d, b: b + ["--out", str(d / "sub.png")], "is a folder"),
    ("out not png", lambda d, b: _edit(b, d, out="e.jpg"), "name it .png"),
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
