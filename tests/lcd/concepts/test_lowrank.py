"""SVD compression of a concept's K/V change (lcd.concepts.lowrank)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lcd.concepts.deltas import kv_deltas
from lcd.concepts.io import apply_concepts, load_concept, save_concept
from lcd.concepts.lowrank import compress_concept, factorize, rank_for_energy
from lcd.errors import LcdError

PROMPT = "a photo of [P] dog"


def test_rank_for_energy_on_a_known_spectrum():
    s = torch.tensor([3.0, 2.0, 1.0, 0.0])  # energies 9, 4, 1 of 14
    assert rank_for_energy(s, 9 / 14) == 1
    assert rank_for_energy(s, 9 / 14 + 1e-6) == 2
    assert rank_for_energy(s, 0.999) == 3 and rank_for_energy(s, 1.0) == 3
    assert rank_for_energy(torch.zeros(3), 0.5) == 0


def test_factorize_full_rank_is_exact_and_truncation_keeps_the_top_directions():
    g = torch.Generator().manual_seed(0)
    d = torch.randn(40, 24, generator=g)
    f = factorize(d, rank=24)
    assert f.up.shape == (40, 24) and f.down.shape == (24, 24) and f.energy == pytest.approx(1.0)
    torch.testing.assert_close(f.up @ f.down, d, rtol=0, atol=1e-5)
    f3 = factorize(d, rank=3)
    u, s, vh = torch.linalg.svd(d.double(), full_matrices=False)
    torch.testing.assert_close((f3.up @ f3.down).double(), (u[:, :3] * s[:3]) @ vh[:3], rtol=0, atol=1e-5)
    assert f3.energy == pytest.approx(float((s[:3] ** 2).sum() / (s ** 2).sum()), rel=1e-9)
    fe = factorize(d, energy=0.6)
    assert fe.energy >= 0.6 and factorize(d, rank=fe.rank - 1).energy < 0.6


def test_bad_targets_are_one_line_errors():
    d = torch.ones(8, 4)
    with pytest.raises(LcdError, match=r"layer0: rank 5 is above this layer's rank 4 \(shape \(8, 4\)\)"):
        factorize(d, rank=5, item="layer0")
    with pytest.raises(LcdError, match="give exactly one of rank or energy"):
        factorize(d, rank=2, energy=0.5)
    with pytest.raises(LcdError, match=r"energy must be in \(0, 1\], got 1.5"):
        factorize(d, energy=1.5)


def test_full_rank_compression_gives_the_same_image(concept_set, fresh_sd, generate, tmp_path):
    """Tolerance 1e-5: W0 + up @ down differs from the stored W by float32 rounding (~1e-7)."""
    a = concept_set["A"]
    base = fresh_sd().pipe
    small = compress_concept(a, base.unet, rank=32)  # every tiny attn2 K/V is (32|64, 32): rank 32 is full
    assert small.layout == "lowrank" and small.lora_scale == 1.0 and small.method == "kv"
    assert small.card["compression"]["energy_kept"] == pytest.approx(1.0, abs=1e-9)
    assert a.layout == "full" and not any(k.endswith("lora_A") for k in a.unet)  # input untouched
    reloaded = load_concept(save_concept(small, tmp_path / "c"))
    assert reloaded.layout == "lowrank" and reloaded.card["compression"]["max_rank"] == 32
    full, comp = fresh_sd(), fresh_sd()
    apply_concepts(full.pipe, [a])
    apply_concepts(comp.pipe, [reloaded])
    x, y = generate(full.pipe, PROMPT), generate(comp.pipe, PROMPT)
    np.testing.assert_allclose(y, x, atol=1e-5)
    assert np.abs(x - generate(fresh_sd().pipe, "a photo of dog dog")).max() > 1e-2  # the concept matters


def test_compressed_concept_is_applied_exactly_as_stored(concept_set, fresh_sd):
    a = concept_set["A"]
    base = fresh_sd().pipe
    small = compress_concept(a, base.unet, energy=0.6)
    comp = small.card["compression"]
    assert comp["energy"] == 0.6 and comp["rank"] is None and comp["energy_kept"] >= 0.6
    assert all(e >= 0.6 for e in comp["energy_per_layer"].values())
    assert comp["min_rank"] >= 1 and comp["max_rank"] < 32 and len(comp["ranks"]) == 12
    lp = fresh_sd()
    w0 = {n: p.detach().clone() for n, p in lp.pipe.unet.named_parameters()}
    apply_concepts(lp.pipe, [small])
    params = dict(lp.pipe.unet.named_parameters())
    for m in small.modules:
        expect = w0[f"{m}.weight"] + small.unet[f"{m}.lora_B"] @ small.unet[f"{m}.lora_A"]
        assert torch.equal(params[f"{m}.weight"].detach(), expect)
        assert small.unet[f"{m}.lora_A"].shape[0] == comp["ranks"][m]
    # the truncated change is the closest rank-r one: its error is the dropped energy
    d = kv_deltas(a, base.unet)
    m0 = small.modules[0]
    err = d[m0] - small.unet[f"{m0}.lora_B"] @ small.unet[f"{m0}.lora_A"]
    assert float(err.pow(2).sum() / d[m0].pow(2).sum()) == pytest.approx(1 - comp["energy_per_layer"][m0], abs=1e-5)


def test_rank_above_a_layer_names_the_layer(concept_set, fresh_sd):
    with pytest.raises(LcdError, match=r"attn2.to_k: rank 33 is above this layer's rank 32"):
        compress_concept(concept_set["A"], fresh_sd().pipe.unet, rank=33)


def test_two_compressed_kv_concepts_are_refused_together(concept_set, fresh_sd):
    """Compressed K/V deltas of separate runs must be merged, not silently summed."""
    from lcd.errors import ModelLoadError

    base = fresh_sd().pipe
    a, b = (compress_concept(concept_set[k], base.unet, rank=2) for k in ("A", "B"))
    with pytest.raises(ModelLoadError, match="merge them first"):
        apply_concepts(fresh_sd().pipe, [a, b])
