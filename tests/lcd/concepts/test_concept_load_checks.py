"""A concept folder whose method or layout does not match its tensors is refused at load, naming
the file and the tensor (applied as-is it would change modules its method never trains)."""

from __future__ import annotations

import pytest
import torch

from lcd.concepts.io import Concept, load_concept, save_concept, tensor_problem
from lcd.errors import ModelLoadError

K = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"
Q = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_q.weight"
SELF = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k.weight"


def test_matching_tensors_pass_and_mismatches_are_named():
    assert tensor_problem("kv", "full", {K: 0}) is None
    assert tensor_problem("crossattn", "full", {K: 0, Q: 0}) is None
    assert tensor_problem("lora", "lowrank", {K[:-7] + ".lora_A": 0, K[:-7] + ".lora_B": 0}) is None
    assert "unet." + Q in tensor_problem("kv", "full", {K: 0, Q: 0})
    assert "unet." + SELF in tensor_problem("crossattn", "full", {SELF: 0})
    assert "does not match" in tensor_problem("kv", "lowrank", {K: 0})  # full tensors under a lowrank card
    assert "unknown method 'bogus'" in tensor_problem("bogus", "full", {})
    assert "unknown layout" in tensor_problem("kv", "sparse", {})


def test_load_refuses_a_kv_concept_holding_query_weights(tmp_path):
    good = Concept(["[P]"], torch.zeros(1, 8), "kv", {K: torch.zeros(4, 8)}, 1.0, {})
    save_concept(good, tmp_path / "good")
    assert load_concept(tmp_path / "good").unet.keys() == {K}
    save_concept(Concept(["[P]"], torch.zeros(1, 8), "kv", {K: torch.zeros(4, 8), Q: torch.zeros(4, 4)}, 1.0, {}),
                 tmp_path / "bad")
    with pytest.raises(ModelLoadError, match=r"concept.safetensors: method 'kv' \(full layout\) does not match"):
        load_concept(tmp_path / "bad")
