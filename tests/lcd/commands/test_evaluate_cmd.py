"""`lcd evaluate edits` and `lcd evaluate dreambench` on tiny models (in-process CLI)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from lcd.cli import main
from lcd.io.images import load_image, save_png

SAMPLES = Path(__file__).resolve().parents[3] / "samples"


@pytest.fixture
def params_file(tiny_dir, tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump({
        "models": {"sd": str(tiny_dir / "sd"), "clip": str(tiny_dir / "clip")},
        "edit": {"steps": 2, "size": 64, "dilate_px": 2, "feather_px": 2},
        "evaluate": {"dino": str(tiny_dir / "dino"), "subjects": ["dog"], "n_prompts": 1, "scene_size": 64,
                     "scenes": [{"image": str(SAMPLES / "scenes/cat_00.jpg"), "mask": str(SAMPLES / "masks/cat_00.png")}]},
    }))
    return p


def test_evaluate_edits_manifest(params_file, tmp_path, capsys):
    from PIL import Image

    # 128 px copies keep the test fast (5-scale MS-SSIM would need > 160 px: 128 px uses 4)
    ref = np.asarray(Image.fromarray(load_image(SAMPLES / "scenes/cat_00.jpg")).resize((128, 128)))
    mask = tmp_path / "mask.png"
    Image.open(SAMPLES / "masks/cat_00.png").convert("L").resize((128, 128), Image.NEAREST).save(mask)
    save_png(tmp_path / "ref.png", ref)
    edited = ref.copy()
    edited[:10, :10] = 0  # background damage in one of the two edits
    save_png(tmp_path / "same.png", ref)
    save_png(tmp_path / "damaged.png", edited)
    concept = str(SAMPLES / "concepts/dog")
    common = {"reference": str(tmp_path / "ref.png"), "mask": str(mask), "prompt": "a [P] dog on a sofa",
              "class_word": "dog", "concept": concept, "method": "m"}
    manifest = [common | {"edit": str(tmp_path / "same.png")}, common | {"edit": str(tmp_path / "damaged.png")},
                {"edit": "x.png", "prompt": "a dog"}]
    (tmp_path / "m.json").write_text(json.dumps(manifest))
    out = tmp_path / "out"
    assert main(["--params", str(params_file), "evaluate", "edits", "--manifest", str(tmp_path / "m.json"), "--out", str(out)]) == 0
    rows = json.loads((out / "rows.json").read_text())
    assert [r["bg_psnr"] for r in rows][0] == "inf" and isinstance(rows[1]["bg_psnr"], float)
    assert rows[0]["ms_ssim"] == pytest.approx(1.0) and rows[0]["msssim_scales"] == 4
    fails = json.loads((out / "failures.json").read_text())
    assert len(fails) == 1 and "lacks reference, mask, concept" in fails[0]["error"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["m"]["n"] == 2 and metrics["m"]["bg_psnr"] == "inf"  # mean over a set with an untouched background
    assert (out / "report.html").exists() and (out / "report.png").exists()
    config = json.loads((out / "config.json").read_text())
    assert config["models"]["dino"]["sha256"] and config["lpips"]["backbone"] == "random"
    assert "failed: x.png" in capsys.readouterr().out


def test_evaluate_edits_missing_manifest_is_one_line_error(params_file, tmp_path, capsys):
    assert main(["--params", str(params_file), "evaluate", "edits", "--manifest", str(tmp_path / "no.json"),
                 "--out", str(tmp_path / "o")]) == 2
    assert "no.json: manifest not found" in capsys.readouterr().err


def test_evaluate_dreambench_command(params_file, dreambench, tmp_path):
    out = tmp_path / "db"
    (tmp_path / "loss.json").write_text(json.dumps({"dog-kv": [0.9, 0.6, 0.5]}))
    assert main(["--params", str(params_file), "evaluate", "dreambench", "--dreambench", str(dreambench), "--out", str(out),
                 "--loss-curves", str(tmp_path / "loss.json")]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == ["class-word"] and metrics["class-word"]["n"] == 1
    page = (out / "report.html").read_text()
    assert page.count("<img ") == 2 and "a dog in the jungle" in page and "dog-kv" in page


def test_evaluate_bad_loss_curves_is_one_line_error(params_file, dreambench, tmp_path, capsys):
    (tmp_path / "loss.json").write_text('{"a": 3}')
    assert main(["--params", str(params_file), "evaluate", "dreambench", "--dreambench", str(dreambench),
                 "--out", str(tmp_path / "o"), "--loss-curves", str(tmp_path / "loss.json")]) == 2
    assert "loss curves must be a JSON object of lists" in capsys.readouterr().err
