"""Closed-form merge of separately trained K/V concepts (lcd.concepts.merge)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from lcd.concepts.captions import CAPTIONS
from lcd.concepts.deltas import kv_deltas
from lcd.concepts.io import apply_concepts
from lcd.concepts.merge import (
    constraint_features,
    encode_texts,
    merge_concepts,
    merge_operator,
    rename_tokens,
)
from lcd.errors import LcdError, ModelLoadError, PromptError

TEMPLATES = ("a photo of {token} {class_word}", "{token} {class_word} in the jungle")
REG = CAPTIONS[:60]


@pytest.fixture(scope="module")
def merged(concept_set, tiny_dir):
    """(merged concept, the pipeline it was merged on: base UNet, both tokens in the text encoder)."""
    from lcd.models.loader import load_sd_pipeline

    lp = load_sd_pipeline(tiny_dir / "sd")
    return merge_concepts(lp.pipe, [concept_set["A"], concept_set["B"]], REG, templates=TEMPLATES), lp.pipe


def test_operator_satisfies_constraints_and_minimises_the_regularizer():
    """Delta = R A meets Delta C^T = R exactly; any other feasible Delta (here A + a null-space
    perturbation) has a larger ||Delta C_reg^T||."""
    g = torch.Generator().manual_seed(0)
    c, c_reg = torch.randn(5, 16, generator=g, dtype=torch.float64), torch.randn(200, 16, generator=g, dtype=torch.float64)
    r = torch.randn(8, 5, generator=g, dtype=torch.float64)
    delta = r @ merge_operator(c, c_reg.T @ c_reg, ridge=0.0)
    torch.testing.assert_close(delta @ c.T, r, rtol=0, atol=1e-10)
    null = torch.eye(16, dtype=torch.float64) - c.T @ torch.linalg.solve(c @ c.T, c)  # projector onto C's null space
    other = delta + 0.1 * torch.randn(8, 16, generator=g, dtype=torch.float64) @ null
    torch.testing.assert_close(other @ c.T, r, rtol=0, atol=1e-10)
    assert (delta @ c_reg.T).norm() < (other @ c_reg.T).norm()


def test_merged_outputs_equal_each_concept_on_its_prompts_and_stay_closer_to_base(concept_set, merged, tiny_dir):
    """Tolerance 1e-4 relative: the constraints are solved exactly in float64, so the only error is
    float32 storage of W and float32 matmuls (~1e-7 relative measured); a wrong formula misses by
    O(1). On the regularization captions the merged change is several times smaller than either
    concept's own change (measured ~5x on this tiny model)."""
    m, pipe = merged
    from lcd.models.loader import load_sd_pipeline

    base = load_sd_pipeline(tiny_dir / "sd").pipe
    params = dict(base.unet.named_parameters())
    dm = kv_deltas(m, base.unet)
    _, reg = encode_texts(pipe, REG)
    reg = reg.reshape(-1, reg.shape[-1])
    own_err, reg_norm = [], {"merged": 0.0, "A": 0.0, "B": 0.0}
    for key in ("A", "B"):
        c = constraint_features(pipe, concept_set[key], TEMPLATES)
        d = kv_deltas(concept_set[key], base.unet)
        assert len(c) >= 6 and set(d) == set(dm) and len(dm) == 12  # 6 attn2 layers x (to_k, to_v)
        for mod in dm:
            w0 = params[f"{mod}.weight"].detach()
            ref = c @ (w0 + d[mod]).T
            own_err.append(float((c @ (w0 + dm[mod]).T - ref).abs().max() / ref.abs().max()))
            reg_norm[key] += float((reg @ d[mod].T).norm() ** 2)
    reg_norm["merged"] = sum(float((reg @ dm[mod].T).norm() ** 2) for mod in dm)
    assert max(own_err) < 1e-4, max(own_err)
    assert reg_norm["merged"] < 0.5 * min(reg_norm["A"], reg_norm["B"]), reg_norm


def test_merged_concept_keeps_token_embeddings_and_edits_with_both_tokens(concept_set, merged, fresh_sd, tmp_path):
    from lcd.concepts.io import load_concept, save_concept
    from lcd.config import EditConfig
    from lcd.edit.engine import EditItem, edit_images

    m, _ = merged
    assert m.tokens == ["[P]", "[Q]"] and m.method == "kv"
    assert torch.equal(m.embeddings, torch.cat([concept_set["A"].embeddings, concept_set["B"].embeddings]))
    assert [f["name"] for f in m.card["merged_from"]] == [str(concept_set["A_dir"]), str(concept_set["B_dir"])]
    lp = fresh_sd()
    apply_concepts(lp.pipe, [load_concept(save_concept(m, tmp_path / "m"))])
    img = np.random.RandomState(0).randint(0, 256, (64, 64, 3), dtype=np.uint8)
    mask = np.zeros((64, 64), bool)
    mask[16:48, 16:48] = True
    res = edit_images(lp, [EditItem(img, mask, "a photo of [P] dog next to [Q] toy", 3)],
                      EditConfig(steps=2, size=64, dilate_px=0, feather_px=0))[0]
    assert res.image.shape == img.shape and (res.image[mask] != img[mask]).any(axis=-1).mean() > 0.9
    assert np.array_equal(res.image[~mask], img[~mask])


def test_merge_refuses_bad_input(concept_set, fresh_sd):
    a, b = concept_set["A"], concept_set["B"]
    pipe = fresh_sd().pipe
    other = replace(b, card=dict(b.card, base={"ref": "other/sd", "sha256": "e" * 64}))
    with pytest.raises(ModelLoadError, match=rf"{a.name} was trained on .* but {b.name} on other/sd \(eeeeeeeeeeee\)"):
        merge_concepts(pipe, [a, other], REG)
    clash = replace(b, tokens=["[P]"])
    with pytest.raises(PromptError, match=rf"token \[P\] is defined by both {a.name} and {b.name}; rename one"):
        merge_concepts(pipe, [a, clash], REG)
    with pytest.raises(LcdError, match="method 'crossattn' changes more than the K/V projections"):
        merge_concepts(pipe, [a, replace(b, method="crossattn")], REG)
    with pytest.raises(LcdError, match="needs at least two concepts, got 1"):
        merge_concepts(pipe, [a], REG)
    with pytest.raises(PromptError, match=r"1 token name\(s\) given for 2 token\(s\)"):
        rename_tokens([a, b], ["[X]"])
    assert rename_tokens([a, clash], ["[X]", "[Y]"])[1].tokens == ["[Y]"]
    # nothing was added to the tokenizer by the refused merges
    assert "[P]" not in pipe.tokenizer.get_vocab()


def test_merge_refuses_too_many_constraints(concept_set, fresh_sd):
    templates = tuple(f"{w} {{token}} {{class_word}} with a long tail of words" for w in ("a", "one", "the", "my", "our"))
    with pytest.raises(LcdError, match="constraint features for a 32-wide text space"):
        merge_concepts(fresh_sd().pipe, [concept_set["A"], concept_set["B"]], REG, templates=templates)


def test_lora_concepts_merge_too(concept_set, fresh_sd):
    """A LoRA concept's delta (scale * B @ A) is merged like a K/V one."""
    m = merge_concepts(fresh_sd().pipe, [concept_set["A"], concept_set["L"]], REG, templates=TEMPLATES[:1])
    assert m.tokens == ["[P]", "[L]"] and len(m.unet) == 12
