"""The key names and alpha/scale arithmetic that kohya sd-scripts, A1111 and ComfyUI apply to a
kohya LoRA file, reimplemented here from their loaders (none is installed or vendored), run on
our kohya/a1111 exports at SD1.5's K/V shapes (320/640/1280 x 768): the weights each would
install equal `apply_concepts`' within 1e-5, for full, LoRA and per-layer-rank concepts.

- kohya sd-scripts networks/lora.py: `LoRANetwork.create_modules` names a module
  `lora_unet` + "." + <Transformer2DModel path> + "." + <child Linear path>, then "." -> "_";
  `create_network_from_weights` takes dim = lora_down.weight.size(0) and alpha from `<name>.alpha`;
  `LoRAModule.__init__`: alpha = dim if alpha is None or alpha == 0, scale = alpha / dim;
  `merge_to` (and networks/merge_lora.py): W = W + multiplier * (up @ down) * scale.
- A1111 extensions-builtin/Lora: networks.py `load_network` splits a key at its first "." into
  module name and network part, `convert_diffusers_name_to_compvis` maps
  lora_unet_down_blocks_i_attentions_j_X -> diffusion_model_input_blocks_{1+3i+j}_1_X,
  mid_block_attentions_0_X -> diffusion_model_middle_block_1_X, up_blocks_i_attentions_j_X ->
  diffusion_model_output_blocks_{3i+j}_1_X; network_lora.py: dim = lora_down.weight.shape[0];
  network.py `calc_scale` = alpha / dim (1.0 without alpha), `finalize_updown`: up @ down *
  calc_scale() * multiplier().
- ComfyUI comfy/lora.py: `model_lora_keys_unet` maps "lora_unet_" + <diffusers key without
  .weight, "." -> "_"> to the UNet weight; `load_lora` reads `<x>.alpha` (.item()),
  `<x>.lora_up.weight`, `<x>.lora_down.weight` into a ("lora", (up, down, alpha, mid)) patch and
  warns on every key left unread; weight_adapter/lora.py `calculate_weight`: alpha = v[2] /
  mat2.shape[0] (mat2 = down; 1.0 without alpha), W += strength * alpha * (up @ down) in float32.
"""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import torch

from lcd.concepts.export import LORA_DIR, export_concept
from lcd.concepts.io import Concept, apply_concepts

pytestmark = pytest.mark.slow  # ~1 min on 2 idle cores: full-rank products at SD1.5's sizes
KV = (".attn2.to_k", ".attn2.to_v")
RTOL = 1e-5
SD15_LDM_ATTN2 = {f"diffusion_model_{b}_1_transformer_blocks_0_attn2_to_{kv}" for kv in "kv" for b in
                  [f"input_blocks_{i}" for i in (1, 2, 4, 5, 7, 8)] + ["middle_block"]
                  + [f"output_blocks_{i}" for i in range(3, 12)]}  # SD1.5's LDM cross-attention K/V


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """SD1.5's UNet on the meta device with only the 32 attn2 K/V weights materialised (random),
    a 768-wide one-layer text encoder and the real CLIP tokenizer: enough for apply_concepts."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from bench.kv_params import SD15_UNET
    from lcd.models.tokenizer import write_clip_tokenizer

    with init_empty_weights():
        unet = UNet2DConditionModel(**SD15_UNET)
    g = torch.Generator().manual_seed(0)
    for name, mod in unet.named_modules():
        if name.endswith(KV):
            mod.weight = torch.nn.Parameter(torch.randn(mod.weight.shape, generator=g) * 0.03, requires_grad=False)
    tok = CLIPTokenizer.from_pretrained(str(write_clip_tokenizer(tmp_path_factory.mktemp("tok"))))
    te = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=12, vocab_size=49408))
    return SimpleNamespace(unet=unet, tokenizer=tok, text_encoder=te)


@pytest.fixture(scope="module")
def concepts(model):
    return _concepts(model.unet)


@pytest.fixture(scope="module")
def applied(model, concepts):
    """kind -> (base, ours), computed once per kind."""
    cache: dict = {}

    def get(kind):
        if kind not in cache:
            cache[kind] = _applied(model, concepts[kind])
        return cache[kind]

    return get


def _modules(unet) -> list[str]:
    return sorted(n for n, _ in unet.named_modules() if n.endswith(KV))


def _concepts(unet) -> dict[str, Concept]:
    g = torch.Generator().manual_seed(1)
    params = dict(unet.named_parameters())
    mods = _modules(unet)
    emb = torch.randn(1, 768, generator=g) * 0.02
    full = {f"{m}.weight": params[f"{m}.weight"].detach() + torch.randn(params[f"{m}.weight"].shape, generator=g) * 0.003
            for m in mods}

    def lowrank(ranks, sd=0.05):
        t = {}
        for m, r in zip(mods, ranks):
            out, inp = params[f"{m}.weight"].shape
            t[f"{m}.lora_A"] = torch.randn(r, inp, generator=g) * sd
            t[f"{m}.lora_B"] = torch.randn(out, r, generator=g) * sd
        return t

    cfg = {"lora_rank": 4, "lora_alpha": 3.0}
    return {
        "full": Concept(["[P]"], emb, "kv", full, 1.0, {"class_words": ["dog"]}, "c/dog"),
        "lora": Concept(["[P]"], emb, "lora", lowrank([4] * 32), 0.75, {"class_words": ["dog"], "config": cfg}, "c/dog"),
        # compressed by energy: ranks 14/15 by layer (the case), and a wider spread
        "ranks14-15": Concept(["[P]"], emb, "kv", lowrank([14 + i % 2 for i in range(32)]), 1.0, {}, "c/dog", "lowrank"),
        "ranks1-40": Concept(["[P]"], emb, "kv", lowrank([1 + (7 * i) % 40 for i in range(32)]), 1.0, {}, "c/dog", "lowrank"),
    }


def _applied(model, concept) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(base K/V weights, what apply_concepts installs), the UNet put back after."""
    import copy

    params = dict(model.unet.named_parameters())
    base = {m: params[f"{m}.weight"].detach().clone() for m in _modules(model.unet)}
    ns = SimpleNamespace(unet=model.unet, tokenizer=copy.deepcopy(model.tokenizer), text_encoder=model.text_encoder)
    apply_concepts(ns, [concept])
    ours = {m: params[f"{m}.weight"].detach().clone() for m in base}
    with torch.no_grad():
        for m, w in base.items():
            params[f"{m}.weight"].copy_(w)
    model.text_encoder.resize_token_embeddings(len(model.tokenizer), mean_resizing=False)
    return base, ours


# --- the three readers, from their documented formats -------------------------------------------

def kohya_merge(sd: dict, unet, base: dict, multiplier: float = 1.0) -> dict[str, torch.Tensor]:
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    names = {}
    for name, mod in unet.named_modules():  # LoRANetwork.create_modules, SD1 UNet targets
        if isinstance(mod, Transformer2DModel):
            for child, sub in mod.named_modules():
                if isinstance(sub, torch.nn.Linear):
                    names[f"lora_unet.{name}.{child}".replace(".", "_")] = f"{name}.{child}"
    dims, alphas = {}, {}
    for k, v in sd.items():  # create_network_from_weights
        lora_name = k.split(".")[0]
        if "alpha" in k:
            alphas[lora_name] = v
        elif "lora_down" in k:
            dims[lora_name] = v.size()[0]
    out = {m: w.double() for m, w in base.items()}
    for lora_name, dim in dims.items():
        alpha = alphas.get(lora_name)
        alpha = alpha.detach().float().numpy() if isinstance(alpha, torch.Tensor) else alpha
        alpha = dim if alpha is None or alpha == 0 else alpha
        scale = float(alpha) / dim
        m = names[lora_name]  # KeyError: a module sd-scripts would not create
        up, down = sd[f"{lora_name}.lora_up.weight"].float(), sd[f"{lora_name}.lora_down.weight"].float()
        out[m] = (base[m].float() + multiplier * (up @ down) * scale).double()  # merge_to
    return out


_A1111 = [(r"lora_unet_down_blocks_(\d+)_attentions_(\d+)_(.+)",
           lambda m: f"diffusion_model_input_blocks_{1 + int(m[1]) * 3 + int(m[2])}_1_{m[3]}"),
          (r"lora_unet_mid_block_attentions_0_(.+)", lambda m: f"diffusion_model_middle_block_1_{m[1]}"),
          (r"lora_unet_up_blocks_(\d+)_attentions_(\d+)_(.+)",
           lambda m: f"diffusion_model_output_blocks_{int(m[1]) * 3 + int(m[2])}_1_{m[3]}")]


def a1111_compvis(key: str) -> str:
    for pat, f in _A1111:
        if m := re.fullmatch(pat, key):
            return f(m)
    raise KeyError(key)  # A1111 would report the key as not matched


def a1111_apply(sd: dict, ldm_to_diffusers: dict[str, str], base: dict, multiplier: float = 1.0):
    groups: dict[str, dict] = {}
    for k, v in sd.items():  # load_network: key_network_without_network_parts, network_part
        stem, part = k.split(".", 1)
        groups.setdefault(a1111_compvis(stem), {})[part] = v
    out = {m: w.double() for m, w in base.items()}
    for ldm, w in groups.items():
        assert {"lora_up.weight", "lora_down.weight"} <= set(w)  # ModuleTypeLora.create_module
        up, down = w["lora_up.weight"].float(), w["lora_down.weight"].float()
        dim = down.shape[0]
        alpha = w["alpha"].item() if "alpha" in w else None
        scale = alpha / dim if alpha is not None else 1.0  # calc_scale
        updown = up.reshape(up.size(0), -1) @ down.reshape(down.size(0), -1)  # rebuild_conventional
        m = ldm_to_diffusers[ldm]
        out[m] = (base[m].float() + updown * scale * multiplier).double()
    return out


def comfy_apply(sd: dict, unet, base: dict, strength: float = 1.0):
    key_map = {"lora_unet_" + n[: -len(".weight")].replace(".", "_"): n[: -len(".weight")]
               for n, _ in unet.named_parameters() if n.endswith(".weight")}  # model_lora_keys_unet
    patches, loaded = {}, set()
    for x, target in key_map.items():  # load_lora
        alpha = sd[f"{x}.alpha"].item() if f"{x}.alpha" in sd else None
        if f"{x}.alpha" in sd:
            loaded.add(f"{x}.alpha")
        if f"{x}.lora_up.weight" in sd:
            patches[target] = (sd[f"{x}.lora_up.weight"], sd[f"{x}.lora_down.weight"], alpha)
            loaded |= {f"{x}.lora_up.weight", f"{x}.lora_down.weight"}
    assert set(sd) == loaded, sorted(set(sd) - loaded)[:3]  # ComfyUI: "lora key not loaded"
    out = {m: w.double() for m, w in base.items()}
    for m, (mat1, mat2, alpha) in patches.items():  # calculate_weight
        alpha = alpha / mat2.shape[0] if alpha is not None else 1.0
        diff = torch.mm(mat1.float().flatten(1), mat2.float().flatten(1)).reshape(base[m].shape)
        out[m] = (base[m].float() + (strength * alpha) * diff).double()
    return out


def _worst(theirs, ours, base):
    worst_w = worst_d = 0.0
    for m in ours:
        err = float((theirs[m] - ours[m].double()).abs().max())
        worst_w = max(worst_w, err / float(ours[m].abs().max()))
        change = float((ours[m].double() - base[m].double()).abs().max())
        worst_d = max(worst_d, err / change if change else (0.0 if err == 0 else float("inf")))
    return worst_w, worst_d


@pytest.mark.parametrize("kind", ["full", "lora", "ranks14-15", "ranks1-40"])
@pytest.mark.parametrize("fmt", ["kohya", "a1111"])
def test_kohya_a1111_comfyui_readers_install_our_weights(model, concepts, applied, tmp_path, fmt, kind):
    from safetensors import safe_open
    from safetensors.torch import load_file

    c = concepts[kind]
    base, ours = applied(kind)
    export_concept(c, model.unet, tmp_path, fmt, name="c")
    f = tmp_path / LORA_DIR / "c.safetensors"
    sd = load_file(str(f))
    # key names: 32 modules x (down, up, alpha), each an SD1.5 LDM cross-attention K/V in A1111
    stems = {k.split(".", 1)[0] for k in sd}
    assert len(stems) == 32 and all(re.fullmatch(r"lora_unet_\w+_attn2_to_[kv]", s) for s in stems)
    assert {k.split(".", 1)[1] for k in sd} == {"lora_down.weight", "lora_up.weight", "alpha"}
    ldm = {s: a1111_compvis(s) for s in stems}
    assert set(ldm.values()) == SD15_LDM_ATTN2
    # one alpha for all modules, never 0 (sd-scripts reads 0 as "alpha = rank"), as the metadata says
    alphas = {float(v) for k, v in sd.items() if k.endswith(".alpha")}
    assert len(alphas) == 1 and min(alphas) > 0
    with safe_open(str(f), framework="pt") as fh:
        assert float(fh.metadata()["ss_network_alpha"]) == alphas.pop()
    if c.lowrank:  # each layer keeps its own rank; the down factors are the concept's own
        for m in c.modules:
            down = sd[f"lora_unet_{m.replace('.', '_')}.lora_down.weight"]
            assert torch.equal(down, c.unet[f"{m}.lora_A"])
    ldm_to_diffusers = {ldm[f"lora_unet_{m.replace('.', '_')}"]: m for m in base}
    for reader, theirs in (("kohya", kohya_merge(sd, model.unet, base)),
                           ("a1111", a1111_apply(sd, ldm_to_diffusers, base)),
                           ("comfyui", comfy_apply(sd, model.unet, base))):
        rel_w, rel_d = _worst(theirs, ours, base)
        assert rel_w <= RTOL and rel_d <= 1e-4, (reader, kind, rel_w, rel_d)


def test_a_trained_loras_own_alpha_and_factors_are_kept(model, concepts, tmp_path):
    """Same ranks everywhere: the file is the LoRA as trained (alpha 3, rank 4, up = lora_B)."""
    from safetensors.torch import load_file

    c = concepts["lora"]
    export_concept(c, model.unet, tmp_path, "kohya", name="c")
    sd = load_file(str(tmp_path / LORA_DIR / "c.safetensors"))
    m = c.modules[0]
    n = f"lora_unet_{m.replace('.', '_')}"
    assert float(sd[f"{n}.alpha"]) == 3.0 and sd[f"{n}.lora_down.weight"].shape[0] == 4
    assert torch.equal(sd[f"{n}.lora_up.weight"], c.unet[f"{m}.lora_B"])


def test_per_layer_alphas_would_be_wrong_where_one_alpha_is_read(model, concepts, applied, tmp_path):
    """Why one alpha: reading the ranks-14/15 export with a single alpha (diffusers' most common)
    stays exact, while the old per-layer alpha = rank file read that way is 6.7% off on the
    layers of the other rank, as the issue measured."""
    from safetensors.torch import load_file

    from lcd.concepts.formats import kohya_state_dict
    from lcd.concepts.lowrank import Factors

    c = concepts["ranks14-15"]
    base, ours = applied("ranks14-15")
    export_concept(c, model.unet, tmp_path, "kohya", name="c")

    def one_alpha(sd):
        alphas = [float(v) for k, v in sd.items() if k.endswith(".alpha")]
        common = max(set(alphas), key=alphas.count)
        return comfy_apply({k: (torch.tensor(common) if k.endswith(".alpha") else v) for k, v in sd.items()},
                           model.unet, base)

    assert _worst(one_alpha(load_file(str(tmp_path / LORA_DIR / "c.safetensors"))), ours, base)[0] <= RTOL
    old = kohya_state_dict({m: (Factors(up=c.unet[f"{m}.lora_B"], down=c.unet[f"{m}.lora_A"], energy=1.0),
                                float(c.unet[f"{m}.lora_A"].shape[0])) for m in c.modules})
    _, rel_d = _worst(one_alpha(old), ours, base)
    assert rel_d > 0.05  # 1/15 = 6.7% of the change on half the layers
