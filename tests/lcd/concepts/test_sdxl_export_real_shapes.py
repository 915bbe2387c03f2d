"""Exports at SDXL's real shapes: the weights diffusers' own loaders install from each export equal
the weights `apply_concepts` installs, within 1e-5 relative per changed tensor.

SDXL's UNet is 2.6B parameters (10 GB in float32), more than a shared CI machine can hold for a
test, and none of it but the K/V weights enters these exports. So the pipeline is SDXL's real
architecture (the bundled configs: UNet with 70 attn2 reading the 2048-wide context, CLIP ViT-L
768 and OpenCLIP bigG 1280 text encoders, CLIP's 49,408-token vocabulary) built on the meta
device, with real random tensors only where a reader or writer looks: the attn2 to_k/to_v of
every attention (down 640/1280, mid 1280, up 1280/640 channels; its first or its last
transformer block, in turn: 22 modules) and both token-embedding matrices. Every other parameter is a
stride-0 zero view (no memory), so the models' own `.to()` calls inside diffusers' loaders are
the no-ops they are on a model already on one device and dtype. The K/V shapes (640 x 2048,
1280 x 2048) are where per-layer ranks and alphas differ; a tiny model has one shape.

Read back as in test_export_real_shapes.py (SD1.5): kohya -> `load_lora_weights` on the SDXL
pipeline (W + scaling * B @ A of every injected peft layer); diffusers -> `load_attn_procs(...,
_pipeline=pipe)` (the processors' to_k/to_v_custom_diffusion); clip_l / clip_g ->
`load_textual_inversion(tensor, token, text_encoder=..., tokenizer=...)` per encoder;
lycoris-full -> W + diff (diffusers has no .diff reader; ComfyUI and A1111 add it as is).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import lcd.models
from lcd.concepts.export import LORA_DIR, export_concept
from lcd.concepts.family import SDXL, diffusers_to_ldm
from lcd.concepts.io import Concept, apply_concepts
from lcd.concepts.kohya import import_kohya

pytestmark = pytest.mark.slow
CONFIGS = Path(lcd.models.__file__).parent / "configs" / "sdxl"
KV = (".attn2.to_k", ".attn2.to_v")
RTOL = 1e-5


def _config(component: str) -> dict:
    return json.loads((CONFIGS / component / "config.json").read_text())


def _chosen(unet) -> list[str]:
    """attn2 to_k / to_v of one transformer block per attention: the first and the last in turn."""
    out = []
    blocks = [(n, m) for n, m in unet.named_modules() if n.endswith(".transformer_blocks")]
    for k, (name, mod) in enumerate(blocks):
        i = 0 if k % 2 == 0 else len(mod) - 1
        out += [f"{name}.{i}{kv}" for kv in KV]
    return sorted(out)


def _materialise(model, real: set[str], gen: torch.Generator) -> None:
    """Replace every meta parameter: random (std 0.02) for the names in `real`, else a stride-0 zero
    view; buffers real (position ids count up)."""
    for name, p in list(model.named_parameters()):
        owner, _, leaf = name.rpartition(".")
        t = (torch.randn(p.shape, generator=gen) * 0.02) if name in real \
            else torch.zeros((), dtype=torch.float32).expand(p.shape)
        model.get_submodule(owner)._parameters[leaf] = torch.nn.Parameter(t, requires_grad=False)
    for name, b in list(model.named_buffers()):
        owner, _, leaf = name.rpartition(".")
        val = torch.arange(b.shape[-1]).expand(b.shape) if leaf == "position_ids" else torch.zeros(b.shape, dtype=b.dtype)
        model.get_submodule(owner)._buffers[leaf] = val


def _shell(tok_dir: Path):
    """SDXL's architecture with real random K/V (the chosen modules) and token embeddings, seed 0."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    gen = torch.Generator().manual_seed(0)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(_config("unet"))
        te1 = CLIPTextModel(CLIPTextConfig(**_config("text_encoder")))
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(**_config("text_encoder_2")))
    _materialise(unet, {f"{m}.weight" for m in _chosen(unet)}, gen)
    for te in (te1, te2):
        _materialise(te, {"text_model.embeddings.token_embedding.weight"}, gen)
    sched = EulerDiscreteScheduler.from_config(json.loads((CONFIGS / "scheduler" / "scheduler_config.json").read_text()))
    return StableDiffusionXLPipeline(vae=None, text_encoder=te1, text_encoder_2=te2, tokenizer=CLIPTokenizer.from_pretrained(tok_dir),
                                     tokenizer_2=CLIPTokenizer.from_pretrained(tok_dir), unet=unet, scheduler=sched)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    from lcd.models.tokenizer import write_clip_tokenizer

    return write_clip_tokenizer(tmp_path_factory.mktemp("clip-tok"))


@pytest.fixture(scope="module")
def sdxl_session(tok_dir):
    """The shell, built once per module under the big-memory lock (~4 GB peak with a full-rank
    LoRA installed), held until the module's tests are done."""
    import fcntl
    import os

    with open(os.environ.get("LCD_BIGMEM_LOCK", "/tmp/lcd-bigmem.lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield _shell(tok_dir)
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _restore(pipe, kv: dict[str, torch.Tensor], n_tokens: int) -> None:
    """Put the shell back: LoRA layers, textual-inversion tokens and processors removed, K/V bit for bit."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    pipe.unload_lora_weights()
    if len(pipe.tokenizer) != n_tokens or len(pipe.tokenizer_2) != n_tokens:
        pipe.unload_textual_inversion()
        pipe.unload_textual_inversion(tokenizer=pipe.tokenizer_2, text_encoder=pipe.text_encoder_2)
    pipe.unet.set_attn_processor(AttnProcessor2_0())
    params = dict(pipe.unet.named_parameters())
    with torch.no_grad():
        for n, t in kv.items():
            params[n].copy_(t)
    assert len(pipe.tokenizer) == n_tokens == len(pipe.tokenizer_2)


@pytest.fixture
def sdxl(sdxl_session):
    """(pipe, reset): the session's shell and a function that puts it back (also run after the test)."""
    pipe = sdxl_session
    kv = {f"{m}.weight": pipe.unet.get_submodule(m).weight.detach().clone() for m in _chosen(pipe.unet)}
    n = len(pipe.tokenizer)
    yield pipe, lambda: _restore(pipe, kv, n)
    _restore(pipe, kv, n)


def _full_concept(unet, seed: int = 0) -> Concept:
    """~5% K/V changes with a spectrum decaying at a per-layer rate, rows for both encoders at
    their real widths."""
    g = torch.Generator().manual_seed(seed)
    params = dict(unet.named_parameters())
    weights = {}
    for i, m in enumerate(_chosen(unet)):
        w0 = params[f"{m}.weight"].detach().float()
        k = 64  # rank 64 (a trained delta's energy sits in its top directions); exported at full rank
        s = torch.exp(-torch.arange(k, dtype=torch.float32) / (2.0 + i % 5))
        d = (torch.randn(w0.shape[0], k, generator=g) * s) @ torch.randn(k, w0.shape[1], generator=g)
        weights[f"{m}.weight"] = w0 + d * (0.05 * float(w0.abs().max()) / float(d.abs().max()))
    return Concept(["[P]"], torch.randn(1, 768, generator=g) * 0.02, "kv", weights, 1.0, {"class_words": ["dog"]},
                   "sdxl/dog", "full", torch.randn(1, 1280, generator=g) * 0.02)


def _lora_concept(unet, rank: int = 4, alpha: float = 3.0, seed: int = 1, ranks: bool = False) -> Concept:
    """A trained LoRA (rank 4, alpha 3), or with `ranks` a compressed K/V concept whose ranks differ
    by layer (2-16, scale 1: what `compress_concept(energy=...)` writes, without its SVDs)."""
    g = torch.Generator().manual_seed(seed)
    params = dict(unet.named_parameters())
    t = {}
    for i, m in enumerate(_chosen(unet)):
        out, inp = params[f"{m}.weight"].shape
        r = 2 + (5 * i) % 15 if ranks else rank
        t[f"{m}.lora_A"], t[f"{m}.lora_B"] = torch.randn(r, inp, generator=g) * 0.05, torch.randn(out, r, generator=g) * 0.05
    card = {"class_words": ["toy"], "config": {} if ranks else {"lora_rank": rank, "lora_alpha": alpha}}
    return Concept(["[L]"], torch.randn(1, 768, generator=g) * 0.02, "kv" if ranks else "lora", t,
                   1.0 if ranks else alpha / rank, card, "sdxl/toy", "lowrank", torch.randn(1, 1280, generator=g) * 0.02)


def _applied(pipe, c: Concept) -> dict[str, torch.Tensor]:
    apply_concepts(pipe, [c])
    params = dict(pipe.unet.named_parameters())
    return {m: params[f"{m}.weight"].detach().double().clone() for m in _chosen(pipe.unet)}


def _close(want: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> None:
    assert set(got) == set(want)
    for m in want:
        d0 = float(want[m].abs().max())
        assert float((got[m] - want[m]).abs().max()) <= RTOL * d0, m


def _lora_installed(pipe) -> dict[str, torch.Tensor]:
    got = {}
    for name, mod in pipe.unet.named_modules():
        if name.endswith(KV) and hasattr(mod, "lora_A") and "default_0" in mod.lora_A:
            ba = mod.lora_B["default_0"].weight.detach() @ mod.lora_A["default_0"].weight.detach()  # float32, as peft
            got[name] = mod.base_layer.weight.detach().double() + mod.scaling["default_0"] * ba.double()
    return got


def test_sdxl_architecture_and_kohya_names(sdxl):
    """70 attn2 reading 2048 wide; our SDXL kohya names are the single-file writer's LDM paths."""
    from lcd.models.ldm_format import unet_key_to_ldm

    pipe, _ = sdxl
    kv = sorted(n for n, _ in pipe.unet.named_modules() if n.endswith(KV))
    assert len(kv) == 140 and {tuple(pipe.unet.get_submodule(m).weight.shape[1:]) for m in kv} == {(2048,)}
    names = {SDXL.kohya_name(m) for m in kv}
    assert len(names) == 140 and "lora_unet_output_blocks_2_1_transformer_blocks_9_attn2_to_v" in names
    cfg = dict(pipe.unet.config)
    assert all(unet_key_to_ldm(f"{m}.weight", cfg) == f"model.diffusion_model.{diffusers_to_ldm(m)}.weight" for m in kv)
    chosen = _chosen(pipe.unet)
    assert len(chosen) == 22 and {pipe.unet.get_submodule(m).weight.shape[0] for m in chosen} == {640, 1280}
    assert any(".transformer_blocks.9." in m for m in chosen) and any(m.startswith("mid_block") for m in chosen)


@pytest.mark.parametrize("kind", ["full", "ranks"])
def test_sdxl_kohya_export_installs_our_weights_in_diffusers(sdxl, tmp_path, kind):
    """kohya files (a full K/V concept at full rank, 640 or 1280 by layer; a compressed one with
    ranks 2-16 by layer; both under one alpha) read by diffusers' load_lora_weights on an SDXL
    pipeline install what apply_concepts installs; the clip_l / clip_g embedding file read by
    load_textual_inversion into each encoder gives the concept's rows (checked once: the file is
    the same for every kind; a trained LoRA's factors are checked on the tiny SDXL)."""
    pipe, reset = sdxl
    c = _full_concept(pipe.unet) if kind == "full" else _lora_concept(pipe.unet, ranks=True)
    res = export_concept(c, pipe.unet, tmp_path / kind, "kohya", tokenizer=pipe.tokenizer)
    assert res["exact"]
    sd = load_file(res["files"][0])
    ranks = {v.shape[0] for k, v in sd.items() if k.endswith("lora_down.weight")}
    assert len(ranks) > 1 and len({float(v) for k, v in sd.items() if k.endswith(".alpha")}) == 1
    assert any(k.startswith("lora_unet_middle_block_1_transformer_blocks_") for k in sd)
    want = _applied(pipe, c)
    reset()
    pipe.load_lora_weights(str(tmp_path / kind / LORA_DIR), weight_name=Path(res["files"][0]).name)
    _close(want, _lora_installed(pipe))
    reset()
    (tok, word), = res["trigger_words"].items()
    if kind == "full":
        return
    emb = load_file(res["embeddings"][tok])
    assert emb["clip_l"].shape == (1, 768) and emb["clip_g"].shape == (1, 1280)
    pipe.load_textual_inversion(emb["clip_l"], token=word, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
    pipe.load_textual_inversion(emb["clip_g"], token=word, text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2)
    for te, tk, rows in [(pipe.text_encoder, pipe.tokenizer, c.embeddings), (pipe.text_encoder_2, pipe.tokenizer_2,
                                                                            c.embeddings_2)]:
        assert torch.equal(te.get_input_embeddings().weight[tk.convert_tokens_to_ids(word)], rows[0])
    reset()
    if kind == "ranks":  # and back: the kohya file imports as a concept that applies the same weights
        back = import_kohya(res["files"][0], res["embeddings"][tok], pipe.unet, token="[Q]")
        _close(want, _applied(pipe, back))


def test_sdxl_diffusers_and_lycoris_exports_install_our_weights(sdxl, tmp_path):
    pipe, reset = sdxl
    c = _full_concept(pipe.unet)
    w0 = {m: pipe.unet.get_submodule(m).weight.detach().double().clone() for m in _chosen(pipe.unet)}
    export_concept(c, pipe.unet, tmp_path / "d", "diffusers")
    ly = load_file(export_concept(c, pipe.unet, tmp_path / "l", "lycoris-full")["files"][0])
    want = _applied(pipe, c)
    reset()
    pipe.unet.load_attn_procs(str(tmp_path / "d"), weight_name="pytorch_custom_diffusion_weights.safetensors",
                              _pipeline=pipe)
    procs = pipe.unet.attn_processors
    got = {m: getattr(procs[m.rsplit(".", 1)[0] + ".processor"], m.rsplit(".", 1)[1] + "_custom_diffusion")
           .weight.detach().double() for m in _chosen(pipe.unet)}
    _close(want, got)
    tok = load_file(str(tmp_path / "d" / "P.safetensors"))
    assert torch.equal(tok["clip_l"], c.embeddings) and torch.equal(tok["clip_g"], c.embeddings_2)
    _close(want, {m: w0[m] + ly[f"{SDXL.kohya_name(m)}.diff"].double() for m in w0})
