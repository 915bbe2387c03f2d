"""Exports other tools load: kohya LoRA, LyCORIS 'full', A1111 embeddings (lcd.concepts.export).

Every check compares what the other tool's own reading would do, never just "a file exists":

- kohya: loaded through diffusers' own non-diffusers LoRA conversion (`pipe.load_lora_weights`
  on the file -> `_convert_non_diffusers_lora_to_diffusers`, diffusers 0.39
  loaders/lora_conversion_utils.py) and compared image to image with our loader.
- LyCORIS full, A1111 (AUTOMATIC1111/stable-diffusion-webui):
  extensions-builtin/Lora/networks.py @873edba: `load_network` splits each key at its first dot
  into module name and network part (lines 147-151: `key_network.split(".", 1)`, then
  `convert_diffusers_name_to_compvis`); lines 66-76 map `lora_unet_down_blocks_(i)_attentions_(j)_X`
  -> `diffusion_model_input_blocks_{1 + 3i + j}_1_X`, `mid_block_attentions_0_X` ->
  `diffusion_model_middle_block_1_X`, `up_blocks_(i)_attentions_(j)_X` ->
  `diffusion_model_output_blocks_{3i + j}_1_X`, matched against the LDM module names with . -> _
  (`assign_network_names_to_compvis_modules`, lines 124-127).
  extensions-builtin/Lora/network_full.py @238adea: line 7 takes a module whose weights hold
  "diff", line 17 `self.weight = weights.w.get("diff")`, lines 19-23 add it at the weight's own
  shape (no alpha: `calc_scale` is 1 without `alpha`/`dim`).
- LyCORIS full, ComfyUI (comfyanonymous/ComfyUI comfy/lora.py @41444b5): `load_lora` lines 193-196
  read `"{}.diff".format(x)` into a ("diff", ...) patch for key x; `model_lora_keys_unet` maps
  `"lora_unet_" + <diffusers key without .weight, . -> _>` to the UNet weight; `calculate_weight`
  adds a diff only when `diff.shape == weight.shape` (else "WEIGHT NOT MERGED").
- A1111 embeddings (modules/textual_inversion/textual_inversion.py @22ecb78, `load_from_file`):
  line 158 the embedding's name is the file name without extension; line 180 safetensors via
  `safetensors.torch.load_file`; lines 198-205 a dict of exactly one tensor, (n, D) or (D,).
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from lcd.concepts.export import EMBEDDINGS_DIR, LORA_DIR, MANIFEST_NAME, concept_triggers, export_concept
from lcd.concepts.io import apply_concepts
from lcd.errors import LcdError

_A1111 = [  # networks.py lines 66-76, SD1.x UNet names only
    (r"lora_unet_down_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)",
     lambda m: f"diffusion_model_input_blocks_{1 + int(m[1]) * 3 + int(m[3])}_{1 if m[2] == 'attentions' else 0}_{m[4]}"),
    (r"lora_unet_mid_block_(attentions|resnets)_(\d+)_(.+)",
     lambda m: f"diffusion_model_middle_block_{1 if m[1] == 'attentions' else int(m[2]) * 2}_{m[3]}"),
    (r"lora_unet_up_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)",
     lambda m: f"diffusion_model_output_blocks_{int(m[1]) * 3 + int(m[3])}_{1 if m[2] == 'attentions' else 0}_{m[4]}"),
]


def a1111_compvis_name(key: str) -> str:
    for pat, f in _A1111:
        if m := re.fullmatch(pat, key):
            return f(m)
    return key


def _ours(concept, fresh_sd, generate, prompt):
    lp = fresh_sd()
    apply_concepts(lp.pipe, [concept])
    return generate(lp.pipe, prompt)


def _stock_with_embeddings(fresh_sd, out, tokens):
    """A stock pipeline with the exported embeddings loaded under our tokens (so one prompt serves
    both); the files are named by their trigger words (lcd_export.json)."""
    pipe = fresh_sd().pipe
    words = json.loads((out / MANIFEST_NAME).read_text())["trigger_words"]
    for t in tokens:
        pipe.load_textual_inversion(str(out / EMBEDDINGS_DIR), weight_name=f"{words[t]}.safetensors", token=t)
    return pipe


@pytest.mark.parametrize("key,prompt", [("L", "a photo of [L] dog"), ("A", "a photo of [P] dog")])
def test_kohya_export_loads_in_diffusers_to_the_same_image(concept_set, fresh_sd, generate, tmp_path, key, prompt):
    """L: a trained LoRA of rank 2 with alpha 1 (scale 0.5); A: full K/V written at full rank."""
    from diffusers.loaders.lora_conversion_utils import _convert_non_diffusers_lora_to_diffusers

    c = concept_set[key]
    res = export_concept(c, fresh_sd().pipe.unet, tmp_path, "kohya", name="mine")
    f = tmp_path / LORA_DIR / "mine.safetensors"
    sd = load_file(str(f))
    assert len(sd) == 12 * 3 and all(re.fullmatch(r"lora_unet_\w+_attn2_to_[kv]\.(lora_down\.weight|lora_up\.weight|alpha)", k) for k in sd)
    ranks = {sd[k].shape[0] for k in sd if k.endswith("lora_down.weight")}
    alphas = {float(sd[k]) for k in sd if k.endswith(".alpha")}
    assert (ranks, alphas) == (({2}, {1.0}) if key == "L" else ({32}, {32.0}))
    _, network_alphas = _convert_non_diffusers_lora_to_diffusers(dict(sd))  # what load_lora_weights reads
    assert set(network_alphas.values()) == alphas and len(network_alphas) == 12
    stock = _stock_with_embeddings(fresh_sd, tmp_path, c.tokens)
    stock.load_lora_weights(str(f.parent), weight_name=f.name)  # offline diffusers needs the name
    np.testing.assert_allclose(generate(stock, prompt), _ours(c, fresh_sd, generate, prompt), atol=1e-4)
    assert res["trigger_words"] == {c.tokens[0]: concept_triggers(c)[c.tokens[0]]} and res["exact"]


def test_lycoris_full_keys_match_a1111_and_comfyui_and_diffs_reproduce_our_image(concept_set, fresh_sd, generate, tmp_path):
    from lcd.models.ldm_format import to_ldm_state_dict

    c, prompt = concept_set["A"], "a photo of [P] dog"
    base = fresh_sd().pipe
    export_concept(c, base.unet, tmp_path, "lycoris-full", name="mine")
    sd = load_file(str(tmp_path / LORA_DIR / "mine.safetensors"))
    assert len(sd) == 12 and all(k.endswith(".diff") for k in sd)
    ldm = {k[len("model."):-len(".weight")].replace(".", "_"): v.shape
           for k, v in to_ldm_state_dict(base).items() if k.startswith("model.diffusion_model.") and k.endswith(".weight")}
    comfy = {"lora_unet_" + n[:-len(".weight")].replace(".", "_"): n for n, _ in base.unet.named_parameters() if n.endswith(".weight")}
    params = dict(base.unet.named_parameters())
    for k, diff in sd.items():
        stem, part = k.split(".", 1)  # A1111: module name, network part
        assert part == "diff"
        assert ldm[a1111_compvis_name(stem)] == diff.shape  # A1111 finds an LDM module of that shape
        assert params[comfy[stem]].shape == diff.shape  # ComfyUI: a weight of exactly that shape
    # apply the diffs by hand, as both tools do: W += diff
    stock = _stock_with_embeddings(fresh_sd, tmp_path, c.tokens)
    p = dict(stock.unet.named_parameters())
    with torch.no_grad():
        for k, diff in sd.items():
            p[comfy[k.split(".", 1)[0]]] += diff
    np.testing.assert_allclose(generate(stock, prompt), _ours(c, fresh_sd, generate, prompt), atol=1e-5)


def test_a1111_embedding_layout(concept_set, fresh_sd, tmp_path):
    c = concept_set["A"]
    res = export_concept(c, fresh_sd().pipe.unet, tmp_path, "a1111")
    word = res["trigger_words"]["[P]"]
    f = tmp_path / EMBEDDINGS_DIR / f"{word}.safetensors"
    assert res["files"] == [str(tmp_path / LORA_DIR / "A.safetensors"), str(f)]  # the LoRA and the embedding
    assert res["prompt"]["a1111"] == f"<lora:A:1> {word} dog"
    data = load_file(str(f))
    assert len(data) == 1  # A1111: 'embedding file has multiple terms in it' otherwise
    (emb,) = data.values()
    assert emb.shape == (1, 32) and emb.dtype == torch.float32  # (vectors, text encoder width)
    assert torch.equal(emb[0], c.embeddings[0]) and f.stem == word  # trigger word = file stem


def test_export_errors(concept_set, fresh_sd, tmp_path):
    from dataclasses import replace

    unet = fresh_sd().pipe.unet
    with pytest.raises(LcdError, match=r"format 'ckpt' is not one of diffusers, kohya, lycoris-full, a1111"):
        export_concept(concept_set["A"], unet, tmp_path, "ckpt")
    with pytest.raises(LcdError, match="method 'crossattn' changes more than the K/V projections"):
        export_concept(replace(concept_set["A"], method="crossattn"), unet, tmp_path, "kohya")
    with pytest.raises(LcdError, match=r"export: --name 'my:dog' must be letters, digits"):
        export_concept(concept_set["A"], unet, tmp_path, "a1111", name="my:dog")  # <lora:my:dog:1> would split


def test_kohya_alpha_is_what_diffusers_scales_by(concept_set, fresh_sd, generate, tmp_path):
    """The same factors with alpha = rank (diffusers' convert_state_dict_to_kohya default) give
    another image: writing the real alpha matters."""
    c, prompt = concept_set["L"], "a photo of [L] dog"
    export_concept(c, fresh_sd().pipe.unet, tmp_path, "kohya", name="mine")
    sd = load_file(str(tmp_path / LORA_DIR / "mine.safetensors"))
    wrong = {k: (torch.tensor(2.0) if k.endswith(".alpha") else v) for k, v in sd.items()}
    save_file(wrong, str(tmp_path / "wrong.safetensors"))
    stock = _stock_with_embeddings(fresh_sd, tmp_path, c.tokens)
    stock.load_lora_weights(str(tmp_path), weight_name="wrong.safetensors")
    assert np.abs(generate(stock, prompt) - _ours(c, fresh_sd, generate, prompt)).max() > 1e-2  # measured 0.026
