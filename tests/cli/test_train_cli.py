"""`lcd train` -> concept folder -> `lcd edit --concept DIR` (in process, through lcd.cli.main)."""

from __future__ import annotations

import json

import pytest
import yaml
from PIL import Image

from lcd.cli import main

from tests.conftest import SAMPLES


@pytest.fixture(scope="module")
def setup(tiny_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    photos = root / "dog"
    photos.mkdir()
    for f in sorted((SAMPLES / "concepts" / "dog").glob("*.jpg")):
        Image.open(f).convert("RGB").resize((64, 64)).save(photos / f.name)
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump({
        "models": {"sd": str(tiny_dir / "sd")},
        "edit": {"steps": 2, "size": 64, "batch_size": 1},
        "train": {"resolution": 64, "batch_size": 2, "steps": 2, "min_photo_px": 32, "lr": 1e-2,
                  "num_class_images": 1, "class_image_steps": 1, "checkpoint_every": 1, "progress": False},
    }))
    rc = main(["--params", str(params), "train", "--photos", str(photos), "--class-word", "dog",
               "--out", str(root / "concept"), "--export-diffusers", str(root / "export")])
    assert rc == 0
    return root, params


def test_train_writes_concept_folder_and_loss_curve(setup):
    root, _ = setup
    card = json.loads((root / "concept" / "card.json").read_text())
    assert card["tokens"] == ["[P]"] and card["steps"] == 2 and card["config"]["resolution"] == 64
    assert (root / "concept" / "concept.safetensors").exists()
    assert (root / "concept" / "training" / "losses.csv").read_text().count("\n") == 3
    assert (root / "export" / "pytorch_custom_diffusion_weights.safetensors").exists()
    assert (root / "export" / "P.safetensors").exists()


def test_edit_with_concept(setup, capsys):
    from lcd.io.images import read_png_meta

    root, params = setup
    out = root / "edit.png"
    rc = main(["--params", str(params), "edit", "--image", str(SAMPLES / "scenes" / "cat_00.jpg"),
               "--mask", str(SAMPLES / "masks" / "cat_00.png"), "--prompt", "a photo of [P] dog",
               "--concept", str(root / "concept"), "--out", str(out)])
    assert rc == 0 and out.exists()
    meta = read_png_meta(out)
    assert meta["concepts"][0]["tokens"] == ["[P]"]


def test_edit_with_concept_needs_its_token(setup, capsys):
    root, params = setup
    rc = main(["--params", str(params), "edit", "--image", str(SAMPLES / "scenes" / "cat_00.jpg"),
               "--mask", str(SAMPLES / "masks" / "cat_00.png"), "--prompt", "a photo of a dog",
               "--concept", str(root / "concept"), "--out", str(root / "x.png")])
    assert rc == 2
    assert "does not contain the concept token ([P])" in capsys.readouterr().err


def test_edit_with_unknown_token_and_no_concept(setup, capsys):
    root, params = setup
    rc = main(["--params", str(params), "edit", "--image", str(SAMPLES / "scenes" / "cat_00.jpg"),
               "--mask", str(SAMPLES / "masks" / "cat_00.png"), "--prompt", "a photo of [P] dog",
               "--out", str(root / "y.png")])
    assert rc == 2 and "no loaded concept defines" in capsys.readouterr().err


def test_train_cli_errors(setup, capsys, tmp_path):
    root, params = setup
    rc = main(["--params", str(params), "train", "--photos", str(root / "dog"), "--out", str(tmp_path / "c")])
    assert rc == 2 and "--class-word is required" in capsys.readouterr().err
    rc = main(["--params", str(params), "train", "--photos", str(root / "dog"), "--photos", str(root / "dog"),
               "--class-word", "dog", "--out", str(tmp_path / "c")])
    assert rc == 2 and "--class-word given 1 time(s) for 2 --photos folder(s)" in capsys.readouterr().err
    rc = main(["--params", str(params), "edit", "--image", str(SAMPLES / "scenes" / "cat_00.jpg"),
               "--mask", str(SAMPLES / "masks" / "cat_00.png"), "--prompt", "a photo of [P] dog",
               "--concept", str(tmp_path), "--out", str(tmp_path / "z.png")])
    assert rc == 2 and "not a concept folder" in capsys.readouterr().err


def test_concept_export_then_import_round_trip(setup, tmp_path, capsys):
    import torch

    from lcd.concepts.io import load_concept

    root, params = setup
    assert main(["--params", str(params), "concept", "export", str(root / "concept"), "--out", str(tmp_path / "d")]) == 0
    assert main(["--params", str(params), "concept", "import", str(tmp_path / "d"), "--out", str(tmp_path / "c"),
                 "--token", "[P]", "--class-word", "dog"]) == 0
    a, b = load_concept(root / "concept"), load_concept(tmp_path / "c")
    assert b.tokens == ["[P]"] and b.card["class_words"] == ["dog"]
    assert torch.equal(a.embeddings, b.embeddings)
    assert set(a.unet) == set(b.unet) and all(torch.equal(a.unet[k], b.unet[k]) for k in a.unet)
    rc = main(["--params", str(params), "concept", "import", str(tmp_path / "d"), "--out", str(tmp_path / "e"),
               "--token", "[P]", "--token", "[Q]"])
    assert rc == 2 and "1 token file(s) but 2 token name(s) given" in capsys.readouterr().err


@pytest.mark.slow
def test_train_killed_mid_run_resumes_from_its_checkpoint(setup, tmp_path):
    """A real `lcd train` process SIGKILLed after a checkpoint; `--resume` finishes the run and the
    concept equals an uninterrupted run's, tensor for tensor."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from safetensors.torch import load_file

    root, params = setup
    raw = yaml.safe_load(params.read_text())
    raw["train"].update(steps=30, checkpoint_every=2)
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(raw))
    cmd = [sys.executable, "-m", "lcd", "--params", str(p), "train", "--photos", str(root / "dog"),
           "--class-word", "dog", "--no-prior"]
    env = {**os.environ, "PYTHONPATH": str(SAMPLES.parent)}
    full = subprocess.run(cmd + ["--out", str(tmp_path / "full")], env=env, capture_output=True, text=True, timeout=600)
    assert full.returncode == 0, full.stderr[-2000:]
    proc = subprocess.Popen(cmd + ["--out", str(tmp_path / "cut")], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    ckpts = tmp_path / "cut" / "training" / "checkpoints"
    deadline = time.time() + 300
    while not (ckpts / "step-000004").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "cut" / "card.json").exists(), "the run finished before it could be killed"
    res = subprocess.run(cmd + ["--out", str(tmp_path / "cut"), "--resume"], env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert report["resumed_from"] >= 4 and report["steps"] == 30
    a, b = load_file(tmp_path / "full" / "concept.safetensors"), load_file(tmp_path / "cut" / "concept.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
