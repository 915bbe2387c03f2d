"""Concept compression: file bytes and output change at several ranks / energies.

1. SD1.5's exact cross-attention K/V shapes (16 attn2 layers, to_k/to_v (320|640|1280, 768), names
   from a UNet built on the meta device from SD1.5's config) with random weights: base W0 ~ N(0,
   0.03^2) and a delta of std 3e-3, either Gaussian (flat spectrum: the worst case for SVD) or with
   singular values decaying as 1/i (closer to what fine-tuning produces). Output change = max
   |x (W - W_r)^T| over 77 text-feature vectors x ~ N(0, 1): the K/V the UNet attends to.
2. A trained tiny concept (random-weight tiny SD, 8 steps on the bundled dog photos): output change
   = max abs pixel difference (0..1) of a 2-step 64 px image against the uncompressed concept.
Bytes are the real concept.safetensors files written by save_concept.

Run from the repo root: `PYTHONPATH=. python bench/concepts.py`. Last printed line: one JSON object.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.kv_params import SD15_UNET  # noqa: E402
from lcd.concepts.io import WEIGHTS_NAME, Concept, apply_concepts, save_concept  # noqa: E402
from lcd.concepts.lowrank import compress_concept  # noqa: E402

TARGETS = [{"rank": 4}, {"rank": 16}, {"rank": 64}, {"energy": 0.6}, {"energy": 0.9}]


class BaseWeights:
    """Stands in for a UNet where only `named_parameters()` is read (the base K/V weights)."""

    def __init__(self, params: dict[str, torch.Tensor]):
        self._p = params

    def named_parameters(self):
        return iter(self._p.items())


def sd15_kv_shapes() -> dict[str, tuple[int, int]]:
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    with init_empty_weights():
        unet = UNet2DConditionModel(**SD15_UNET)
    return {n: tuple(p.shape) for n, p in unet.named_parameters() if "attn2.to_k.weight" in n or "attn2.to_v.weight" in n}


def random_delta(shape, spectrum: str, g: torch.Generator) -> torch.Tensor:
    d = torch.randn(shape, generator=g)
    if spectrum == "decaying":
        u, _, vh = torch.linalg.svd(d, full_matrices=False)
        s = 1.0 / torch.arange(1, min(shape) + 1, dtype=torch.float32)
        d = (u * s) @ vh
    return 3e-3 * d / d.std()


def _size(concept: Concept) -> int:
    with tempfile.TemporaryDirectory() as t:
        return (save_concept(concept, t) / WEIGHTS_NAME).stat().st_size


def _label(t: dict) -> str:
    return f"rank_{t['rank']}" if "rank" in t else f"energy_{t['energy']}".replace(".", "_")


def sd15_case(spectrum: str) -> dict:
    g = torch.Generator().manual_seed(0)
    shapes = sd15_kv_shapes()
    base = {n: 0.03 * torch.randn(s, generator=g) for n, s in shapes.items()}
    deltas = {n: random_delta(s, spectrum, g) for n, s in shapes.items()}
    full = Concept(["[P]"], torch.randn(1, 768, generator=g), "kv", {n: base[n] + deltas[n] for n in shapes})
    x = torch.randn(77, 768, generator=g)
    out = {"case": f"sd15_{spectrum}", "layers": len(shapes), "params": sum(a * b for a, b in shapes.values()),
           "bytes_full": _size(full), "rows": []}
    for t in TARGETS:
        t0 = time.perf_counter()
        small = compress_concept(full, BaseWeights(base), **t)
        diff = 0.0
        for n in shapes:
            m = n[: -len(".weight")]
            approx = small.unet[f"{m}.lora_B"] @ small.unet[f"{m}.lora_A"]
            diff = max(diff, float((x @ (deltas[n] - approx).T).abs().max()))
        c = small.card["compression"]
        out["rows"].append({"target": _label(t), "bytes": _size(small), "min_rank": c["min_rank"], "max_rank": c["max_rank"],
                            "energy_kept": round(c["energy_kept"], 4), "max_abs_diff_kv": diff,
                            "seconds": round(time.perf_counter() - t0, 2)})
    return out


def tiny_case() -> dict:
    from PIL import Image

    from lcd.models.loader import load_sd_pipeline
    from lcd.models.tiny import write_tiny_models
    from lcd.train.config import ConceptSpec, TrainConfig
    from lcd.train.loop import train_concepts

    root = Path(tempfile.mkdtemp(prefix="lcd-bench-concepts-"))
    write_tiny_models(root)
    photos = root / "dog"
    photos.mkdir()
    for f in sorted((Path(__file__).resolve().parents[1] / "samples" / "concepts" / "dog").glob("*.jpg")):
        Image.open(f).convert("RGB").resize((64, 64)).save(photos / f.name)
    cfg = TrainConfig(resolution=64, batch_size=2, steps=8, min_photo_px=32, lr=1e-2, prior=False,
                      checkpoint_every=0, progress=False)
    concept = train_concepts(load_sd_pipeline(root / "sd"), [ConceptSpec(photos=str(photos), class_word="dog")], cfg).concept

    def image(c: Concept) -> np.ndarray:
        lp = load_sd_pipeline(root / "sd")
        apply_concepts(lp.pipe, [c])
        gen = torch.Generator("cpu").manual_seed(0)
        return lp.pipe("a photo of [P] dog", num_inference_steps=2, height=64, width=64, generator=gen,
                       output_type="np").images[0]

    ref = image(concept)
    base_unet = load_sd_pipeline(root / "sd").pipe.unet
    out = {"case": "tiny_trained", "bytes_full": _size(concept), "rows": []}
    for t in [{"rank": 1}, {"rank": 4}, {"rank": 32}, {"energy": 0.6}, {"energy": 0.9}]:
        small = compress_concept(concept, base_unet, **t)
        c = small.card["compression"]
        out["rows"].append({"target": _label(t), "bytes": _size(small), "min_rank": c["min_rank"], "max_rank": c["max_rank"],
                            "energy_kept": round(c["energy_kept"], 4),
                            "max_abs_diff_image": float(np.abs(image(small) - ref).max())})
    return out


def _row(case: dict, target: str) -> dict:
    return next(r for r in case["rows"] if r["target"] == target)


if __name__ == "__main__":
    cases = [sd15_case("gaussian"), sd15_case("decaying"), tiny_case()]
    for c in cases:
        print(json.dumps(c))
    gauss, decay, tiny = cases
    print(json.dumps({
        "bytes_full": gauss["bytes_full"],
        "bytes_energy_0_6": _row(gauss, "energy_0_6")["bytes"],
        "max_abs_diff_energy_0_6": _row(gauss, "energy_0_6")["max_abs_diff_kv"],
        "note": "sd15 shapes, gaussian random delta (worst case), K/V output diff on N(0,1) features",
        "decaying_bytes_energy_0_6": _row(decay, "energy_0_6")["bytes"],
        "decaying_max_abs_diff_energy_0_6": _row(decay, "energy_0_6")["max_abs_diff_kv"],
        "tiny_trained_bytes_full": tiny["bytes_full"],
        "tiny_trained_bytes_energy_0_6": _row(tiny, "energy_0_6")["bytes"],
        "tiny_trained_max_abs_diff_image_energy_0_6": _row(tiny, "energy_0_6")["max_abs_diff_image"],
        "tiny_trained_max_abs_diff_image_rank_32_full": _row(tiny, "rank_32")["max_abs_diff_image"],
    }))
