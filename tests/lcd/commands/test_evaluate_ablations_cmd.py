"""`lcd evaluate ablations` end to end on tiny models: real lcd.train runs (kv, full), region
modes with CLIP text selection, and the token ablation with the trained concept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from lcd.cli import main

SAMPLES = Path(__file__).resolve().parents[3] / "samples"


def test_evaluate_ablations_end_to_end(tiny_dir, dreambench, tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump({
        "models": {"sd": str(tiny_dir / "sd"), "clip": str(tiny_dir / "clip")},
        "edit": {"steps": 2, "size": 64, "dilate_px": 2, "feather_px": 2},
        "train": {"resolution": 64, "batch_size": 1, "steps": 2, "min_photo_px": 32, "lr": 1e-3, "prior": False,
                  "checkpoint_every": 0},
        "evaluate": {"dino": str(tiny_dir / "dino"), "subjects": ["dog"], "n_prompts": 1, "scene_size": 64,
                     "dreambench": str(dreambench), "lpips_backbone": "random",
                     "scenes": [{"image": str(SAMPLES / "scenes/cat_00.jpg"), "mask": str(SAMPLES / "masks/cat_00.png")}]},
    }))
    out = tmp_path / "abl"
    assert main(["--params", str(p), "evaluate", "ablations", "--out", str(out)]) == 0
    tables = json.loads((out / "ablations.json").read_text())
    t2, t3, t4 = (tables[k] for k in sorted(tables))
    kv, full = t2
    assert (kv["setting"], full["setting"]) == ("kv", "full")
    assert 0 < kv["trainable_params"] < full["trainable_params"] and kv["fraction_of_unet"] < 0.5
    assert full["fraction_of_unet"] == 1.0 and kv["time_s"] > 0 and full["time_s"] > 0
    by = {r["region"]: r for r in t3}
    assert set(by) == {"none", "text", "sam"}
    assert by["sam"]["bg_lpips"] <= by["none"]["bg_lpips"]  # editing only the SAM region keeps the background
    assert [r["method"] for r in t4] == ["with-token", "without-token"] and all(r["n"] == 1 for r in t4)
    assert set(json.loads((out / "metrics.json").read_text())) == {"with-token", "without-token"}
    page = (out / "report.html").read_text()
    assert "Table 2" in page and "Table 3" in page and "Table 4" in page


def test_ablations_without_scenes_is_one_line_error(tiny_dir, dreambench, tmp_path, capsys):
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump({
        "models": {"sd": str(tiny_dir / "sd"), "clip": str(tiny_dir / "clip")},
        "evaluate": {"dino": str(tiny_dir / "dino"), "subjects": ["dog"], "dreambench": str(dreambench), "scenes": []},
    }))
    assert main(["--params", str(p), "evaluate", "ablations", "--out", str(tmp_path / "o")]) == 2
    assert "ablations need at least one scene" in capsys.readouterr().err


def test_dreambench_bad_concept_spec_is_one_line_error(tiny_dir, dreambench, tmp_path, capsys):
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump({"models": {"sd": str(tiny_dir / "sd"), "clip": str(tiny_dir / "clip")},
                                 "evaluate": {"dino": str(tiny_dir / "dino"), "subjects": ["dog"]}}))
    assert main(["--params", str(p), "evaluate", "dreambench", "--dreambench", str(dreambench), "--out",
                 str(tmp_path / "o"), "--concept", "a/dog", "--concept", "dog=b"]) == 2
    assert "two folders for subject 'dog'" in capsys.readouterr().err
