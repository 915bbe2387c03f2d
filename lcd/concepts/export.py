"""`export_concept`: write a concept in the layout of diffusers, kohya, LyCORIS 'full' or A1111.

Folder written under `out_dir` (file names are the constants below):
    diffusers     pytorch_custom_diffusion_weights.safetensors + <TOKEN>.safetensors (io.export_diffusers)
    kohya         lora/<name>.safetensors (LoRA) + embeddings/<TOKEN>.safetensors per token
    lycoris-full  lora/<name>.safetensors (diffs) + embeddings/<TOKEN>.safetensors per token
    a1111         embeddings/<TOKEN>.safetensors per token
A1111 takes `lora/` files in models/Lora (prompt `<lora:name:1>`) and `embeddings/` in
embeddings/ (prompt word TOKEN, without brackets); ComfyUI in models/loras and models/embeddings.
"""

from __future__ import annotations

import json
from pathlib import Path

from lcd.concepts import formats
from lcd.concepts.deltas import kv_deltas
from lcd.concepts.io import Concept, export_diffusers, token_file_name
from lcd.errors import LcdError
from lcd.io.atomic import atomic_path

FORMATS = ("diffusers", "kohya", "lycoris-full", "a1111")
LORA_DIR, EMBEDDINGS_DIR = "lora", "embeddings"


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise LcdError(f"export: format {fmt!r} is not one of {', '.join(FORMATS)}", item=fmt)


def _save(tensors: dict, path: Path, metadata: dict[str, str] | None = None) -> Path:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def _metadata(concept: Concept, fmt: str, ranks: list[int] | None = None, alphas: list[float] | None = None) -> dict:
    """kohya-style `ss_*` keys A1111 shows (informational), plus our tokens and base pin."""
    base = concept.card.get("base") or {}
    meta = {"ss_base_model_version": "sd_v1", "lcd_format": fmt, "lcd_tokens": json.dumps(concept.tokens),
            "lcd_base": json.dumps({k: base.get(k) for k in ("ref", "sha256", "revision")})}
    if ranks:
        meta["ss_network_module"] = "networks.lora"
        meta["ss_network_dim"] = str(ranks[0]) if len(set(ranks)) == 1 else "Dynamic"
        meta["ss_network_alpha"] = str(alphas[0]) if len(set(alphas)) == 1 else "Dynamic"
    return meta


def write_embeddings(concept: Concept, out_dir: Path) -> dict[str, str]:
    """One A1111 embedding file per token -> {token: path}."""
    return {t: str(_save(formats.a1111_embedding(row), out_dir / EMBEDDINGS_DIR / token_file_name(t)))
            for t, row in zip(concept.tokens, concept.embeddings)}


def export_concept(concept: Concept, unet, out_dir: str | Path, fmt: str, name: str | None = None) -> dict:
    """Write `concept` (trained on `unet`'s weights) in `fmt` under `out_dir` -> {'format',
    'files': [paths], 'embeddings': {token: path}, 'trigger_words': {token: word}}."""
    check_format(fmt)
    out = Path(out_dir)
    name = name or Path(concept.name).name or "concept"
    words = {t: formats.embedding_name(t) for t in concept.tokens}
    if fmt == "diffusers":
        export_diffusers(concept, unet, out)
        files = [str(out / token_file_name(t)) for t in concept.tokens]
        return {"format": fmt, "files": files, "embeddings": dict(zip(concept.tokens, files)), "trigger_words": words}
    files: list[str] = []
    if fmt in ("kohya", "lycoris-full"):
        deltas = kv_deltas(concept, unet)
        if fmt == "kohya":
            factors = formats.lora_factors(concept, deltas)
            sd = formats.kohya_state_dict(factors)
            meta = _metadata(concept, fmt, [f.rank for f, _ in factors.values()], [a for _, a in factors.values()])
        else:
            sd, meta = formats.lycoris_full_state_dict(deltas), _metadata(concept, fmt)
        files.append(str(_save(sd, out / LORA_DIR / f"{name}.safetensors", meta)))
    emb = write_embeddings(concept, out)
    return {"format": fmt, "files": files + list(emb.values()), "embeddings": emb, "trigger_words": words}
