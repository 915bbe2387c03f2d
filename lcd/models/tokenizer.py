"""A real CLIP BPE tokenizer built offline from the vocabulary shipped in open_clip's wheel.

SD1.5's tokenizer is CLIP's 49,408-token BPE. open_clip ships the same merges file
(`bpe_simple_vocab_16e6.txt.gz`); rebuilding `vocab.json` + `merges.txt` from it gives the same
ids as the hub tokenizer ('a photo of a cat' -> 49406 320 1125 539 320 2368 49407), so tiny
models tokenize exactly like the real one and nothing is fetched from a hub.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
from pathlib import Path

N_MERGES = 49152 - 256 - 2  # as open_clip's SimpleTokenizer and OpenAI CLIP slice the file


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte -> printable unicode table (the standard byte-level BPE alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def clip_bpe_path() -> Path:
    """Path of open_clip's bundled BPE merges file (found without importing open_clip)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or spec.origin is None:
        raise RuntimeError("open_clip is not installed: it ships the CLIP BPE vocabulary")
    return Path(os.path.dirname(spec.origin)) / "bpe_simple_vocab_16e6.txt.gz"


def write_clip_tokenizer(out_dir: str | Path, model_max_length: int = 77) -> Path:
    """Write a transformers `CLIPTokenizer` folder (vocab.json, merges.txt, configs) to out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = gzip.open(clip_bpe_path()).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : N_MERGES + 1]]
    alphabet = list(_bytes_to_unicode().values())
    vocab = alphabet + [v + "</w>" for v in alphabet] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (out / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": model_max_length,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "do_lower_case": True,
        "errors": "replace",
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    special = {k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    return out
