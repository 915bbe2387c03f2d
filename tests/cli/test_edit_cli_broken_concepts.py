"""`lcd edit --concept DIR` with a broken concept: one line, exit 2, no output written; the same
checks as edit-batch (lcd.concepts.validate, lcd.edit.result_checks)."""

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import save_file

from lcd.cli import main
from lcd.concepts.io import Concept, save_concept

from tests.conftest import REPO

KV = [f"mid_block.attentions.0.transformer_blocks.0.attn2.{p}" for p in ("to_k", "to_v")]


@pytest.fixture
def scene(tiny_dir, tmp_path):
    p = tmp_path / "params.yaml"
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["models"]["sd"] = str(tiny_dir / "sd")
    raw["edit"].update(steps=2, size=64)
    p.write_text(yaml.safe_dump(raw))
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(tmp_path / "s.png")
    m = np.zeros((48, 48), np.uint8)
    m[8:40, 8:40] = 255
    Image.fromarray(m).save(tmp_path / "m.png")
    return tmp_path, p


def _edit(tmp_path, params, concept, capsys) -> tuple[int, list[str]]:
    out = tmp_path / "o.png"
    rc = main(["--params", str(params), "edit", "--image", str(tmp_path / "s.png"), "--mask", str(tmp_path / "m.png"),
               "--prompt", "a photo of [C] dog", "--out", str(out), "--concept", str(concept)])
    assert not out.exists()
    return rc, capsys.readouterr().err.strip().splitlines()


def test_a_lora_of_mismatched_ranks_is_one_line(scene, capsys):
    tmp_path, params = scene
    c = tmp_path / "c"
    c.mkdir()
    t = {"text.embeddings": torch.zeros(1, 32)}
    for m in KV:
        t |= {f"unet.{m}.lora_A": torch.zeros(2, 32), f"unet.{m}.lora_B": torch.zeros(64, 3)}
    save_file(t, str(c / "concept.safetensors"),
              metadata={"tokens": json.dumps(["[C]"]), "method": "lora", "layout": "lowrank", "lora_scale": "1.0"})
    rc, err = _edit(tmp_path, params, c, capsys)
    assert rc == 2 and len(err) == 1 and "lora_A has rank 2 but lora_B has rank 3" in err[0] and str(c) in err[0], err


@pytest.mark.slow
def test_a_concept_whose_edit_is_nan_writes_nothing(scene, capsys):
    tmp_path, params = scene
    c = save_concept(Concept(["[C]"], torch.zeros(1, 32), "kv", {f"{m}.weight": torch.full((64, 32), 1e30) for m in KV}),
                     tmp_path / "huge")
    rc, err = _edit(tmp_path, params, c, capsys)
    assert rc == 2 and len(err) == 1, err
    assert "the edit produced NaN in the latents" in err[0]
