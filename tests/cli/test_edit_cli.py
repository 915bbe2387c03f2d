"""`lcd edit` and `lcd models tiny`: outputs with metadata; user errors are one line, exit 2."""

import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml
from PIL import Image

from lcd.cli import main
from lcd.io.images import read_png_meta

from tests.conftest import REPO, SAMPLES


@pytest.fixture
def params(tiny_dir, tmp_path):
    p = tmp_path / "params.yaml"
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["models"]["sd"] = str(tiny_dir / "sd")
    raw["edit"].update(steps=2, size=64)
    p.write_text(yaml.safe_dump(raw))
    return p


def _edit(params, out, **kw):
    args = {"image": SAMPLES / "scenes/cat_00.jpg", "mask": SAMPLES / "masks/cat_00.png",
            "prompt": "a photo of a dog", "out": out} | kw
    argv = ["--params", str(params), "edit"]
    for k, v in args.items():
        argv += [f"--{k}", str(v)]
    return main(argv)


def test_edit_writes_png_with_parameters(params, tmp_path, capsys):
    out = tmp_path / "o.png"
    assert _edit(params, out, seed=4) == 0
    meta = read_png_meta(out)
    assert meta["seed"] == 4 and meta["steps"] == 2 and meta["model_source"]["sha256"]
    assert "Seed: 4" in Image.open(out).info["parameters"]
    assert Image.open(out).size == (512, 512)


def test_edit_to_webp_is_lossless_outside_the_region_and_keeps_metadata(params, tmp_path):
    from lcd.io.encode import read_parameters
    from lcd.io.images import load_image

    png, webp = tmp_path / "o.png", tmp_path / "o.webp"
    assert _edit(params, png, seed=4) == 0 and _edit(params, webp, seed=4) == 0
    with Image.open(webp) as im:
        assert im.format == "WEBP" and "Seed: 4" in read_parameters(im)
    assert np.array_equal(load_image(webp), load_image(png))  # same pixels, another lossless container
    assert read_png_meta(webp)["seed"] == 4


@pytest.mark.parametrize(
    "change, match",
    [
        ({"image": "missing.jpg"}, "missing.jpg: file not found"),
        ({"mask": SAMPLES / "ATTRIBUTION.md"}, "ATTRIBUTION.md: not an image file"),
        ({"prompt": "a photo of [P] dog"}, r"uses concept token \[P\]"),
        ({"model": "/no/such/model"}, "/no/such/model: model path not found"),
    ],
)
def test_user_errors_are_one_line_exit_2(params, tmp_path, capsys, change, match):
    import re

    assert _edit(params, tmp_path / "o.png", **change) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(match, err), err
    assert "Traceback" not in err
    assert not (tmp_path / "o.png").exists()


def test_wrong_mask_size_and_unknown_params_key(params, tmp_path, capsys):
    small = tmp_path / "small.png"
    Image.new("L", (10, 10), 255).save(small)
    assert _edit(params, tmp_path / "o.png", mask=small) == 2
    assert "mask is 10x10 but image" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text(params.read_text() + "\nbogus: 1\n")
    assert _edit(bad, tmp_path / "o.png") == 2
    assert "bogus: Extra inputs are not permitted" in capsys.readouterr().err


def test_real_process_prints_no_traceback(params, tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "lcd", "--params", str(params), "edit", "--image", "nope.jpg",
         "--mask", "nope.png", "--prompt", "x", "--out", str(tmp_path / "o.png")],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr and "nope.jpg: file not found" in r.stderr


def test_models_tiny_then_demo(tmp_path):
    r = subprocess.run([sys.executable, "-m", "lcd", "models", "tiny", str(tmp_path / "m")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    for sub in ("sd/model_index.json", "sd-inpaint/unet/config.json", "sam/sam_vit_tiny.pth", "clip/config.json"):
        assert (tmp_path / "m" / sub).exists(), sub
    shutil.copytree(SAMPLES, tmp_path / "samples")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["models"]["sd"] = "m/sd"
    raw["edit"].update(steps=2, size=64)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    r = subprocess.run([sys.executable, "-m", "lcd", "demo", "--tiny-dir", "m", "--out", "out"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(list((tmp_path / "out").glob("*.png"))) == 3
