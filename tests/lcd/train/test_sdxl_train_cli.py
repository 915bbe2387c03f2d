"""`lcd train` (what the nightly deployment runs) on the tiny SDXL, then `lcd concept compress` and
`lcd concept export --format kohya` on the result, in process through lcd.cli.main."""

from __future__ import annotations

import json

import pytest
import yaml
from safetensors.torch import load_file

from lcd.cli import main


@pytest.mark.slow
def test_lcd_train_and_concept_commands_on_sdxl(tiny_dir, dog_photos, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({
        "models": {"sd": str(tiny_dir / "sdxl")},
        "train": {"resolution": 64, "batch_size": 2, "steps": 2, "min_photo_px": 32, "lr": 1e-2,
                  "num_class_images": 1, "class_image_steps": 1, "checkpoint_every": 1, "progress": False},
    }))
    rc = main(["--params", str(params), "train", "--photos", str(dog_photos), "--class-word", "dog",
               "--out", str(tmp_path / "concept")])
    assert rc == 0
    sd = load_file(str(tmp_path / "concept" / "concept.safetensors"))
    assert sd["text.embeddings"].shape == (1, 32) and sd["text_2.embeddings"].shape == (1, 48)
    card = json.loads((tmp_path / "concept" / "card.json").read_text())
    assert card["steps"] == 2 and card["config"]["prior"] is True  # prior images from the SDXL pipeline
    assert all(k.endswith((".to_k.weight", ".to_v.weight")) for k in sd if k.startswith("unet."))
    assert main(["--params", str(params), "concept", "compress", str(tmp_path / "concept"), "--out",
                 str(tmp_path / "small"), "--rank", "1"]) == 0
    assert main(["--params", str(params), "concept", "export", str(tmp_path / "small"), "--out", str(tmp_path / "k"),
                 "--format", "kohya", "--name", "dog"]) == 0
    lora = load_file(str(tmp_path / "k" / "lora" / "dog.safetensors"))
    assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_down.weight" in lora
    manifest = json.loads((tmp_path / "k" / "lcd_export.json").read_text())
    emb = load_file(str(tmp_path / "k" / manifest["files"][1]["path"]))
    assert set(emb) == {"clip_l", "clip_g"}
