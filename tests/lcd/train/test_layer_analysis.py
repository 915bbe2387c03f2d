"""Δl analysis: every parameter counted once, trained layers move, report files written."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from lcd.train.analysis import GROUPS, analyze_layers, group_means, group_of, layer_deltas, layer_of, write_report
from lcd.train.config import ConceptSpec


def test_layer_deltas_math():
    before = {"a.attn2.to_k.weight": torch.ones(2, 2), "a.attn2.to_k.bias": torch.zeros(2),
              "b.attn1.to_q.weight": torch.ones(4), "c.conv.weight": torch.zeros(3)}
    after = {"a.attn2.to_k.weight": torch.ones(2, 2) * 2, "a.attn2.to_k.bias": torch.zeros(2),
             "b.attn1.to_q.weight": torch.ones(4), "c.conv.weight": torch.full((3,), 2.0)}
    rows = {r.layer: r for r in layer_deltas(before, after)}
    assert rows["a.attn2.to_k"].delta == pytest.approx(1.0) and rows["a.attn2.to_k"].n_params == 6
    assert rows["b.attn1.to_q"].delta == 0.0
    assert rows["c.conv"].delta == pytest.approx(np.sqrt(12))  # zero-norm layer: absolute change
    assert group_means(rows.values())["cross-attention"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="parameter names differ"):
        layer_deltas(before, {})


def test_full_finetune_groups_cover_every_parameter_once(fresh_sd, dog_photos, tiny_cfg, tmp_path):
    lp = fresh_sd()
    names = [n for n, _ in lp.pipe.unet.named_parameters()]
    total = sum(p.numel() for p in lp.pipe.unet.parameters())
    rows = analyze_layers(lp, ConceptSpec(photos=str(dog_photos), class_word="dog"), tiny_cfg(steps=1))
    assert sum(r.n_params for r in rows) == total
    assert sorted(r.layer for r in rows) == sorted(set(layer_of(n) for n in names))
    assert {r.group for r in rows} == set(GROUPS)
    assert all(r.group == group_of(r.layer + ".weight") for r in rows)
    assert sum(r.delta > 0 for r in rows) > 0.9 * len(rows)  # full fine-tuning moved nearly all layers
    paths = write_report(rows, tmp_path)
    assert paths["table"].read_text().count("\n") == len(rows) + 1
    groups = json.loads(paths["groups"].read_text())
    assert sum(g["params"] for g in groups.values()) == total
    assert Image.open(paths["chart"]).size == (900, 420)


def test_analyze_layers_command(tiny_dir, dog_photos, tmp_path, capsys):
    import yaml

    from lcd.cli import main

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"models": {"sd": str(tiny_dir / "sd")},
                                      "train": {"resolution": 64, "batch_size": 2, "min_photo_px": 32,
                                                "prior": False, "progress": False}}))
    rc = main(["--params", str(params), "analyze-layers", "--photos", str(dog_photos), "--class-word", "dog",
               "--steps", "1", "--out", str(tmp_path / "an")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "cross-attention" in out and (tmp_path / "an" / "delta_l.png").exists()
