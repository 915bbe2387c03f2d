"""Shortfall: class images generated with the base model, cached by what determines them.

Image i uses its own generator seeded `seed + i`, so it does not depend on the batch size or on
how many images a previous run made; the cache key is (model, prompt, size, steps, guidance,
seed + i), and a rerun that needs the same images generates none.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from lcd.io.atomic import atomic_path
from lcd.progress import Progress


@dataclass(frozen=True)
class GenerationSpec:
    """Everything a generated class image depends on. `model` pins the weights (content hash)."""

    model: str
    prompt: str
    size: int = 512
    steps: int = 50
    guidance: float = 6.0
    seed: int = 0

    def key(self, i: int) -> str:
        blob = json.dumps({**self.__dict__, "index": i}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class GenerationReport:
    files: list[Path]
    generated: int  # images run through the model now
    cached: int


def generate_class_images(
    spec: GenerationSpec, count: int, cache_dir: str | Path, load_pipeline: Callable[[], object], batch_size: int = 4
) -> GenerationReport:
    """Return `count` PNG files (size x size RGB) of `spec.prompt`, generating only the missing
    ones. `load_pipeline()` -> LoadedPipeline is called only if something must be generated."""
    cache = Path(cache_dir)
    files = [cache / f"{spec.key(i)}.png" for i in range(count)]
    todo = [i for i, f in enumerate(files) if not f.exists()]
    if todo:
        pipe = load_pipeline().pipe
        progress = Progress(f"regset generate ({count - len(todo)} cached)", len(todo), unit="images")
        for start in range(0, len(todo), batch_size):
            idx = todo[start:start + batch_size]
            gens = [torch.Generator(device="cpu").manual_seed(spec.seed + i) for i in idx]
            out = pipe(
                prompt=[spec.prompt] * len(idx), height=spec.size, width=spec.size,
                num_inference_steps=spec.steps, guidance_scale=spec.guidance,
                generator=gens, output_type="pil",
            ).images
            for i, im in zip(idx, out):
                with atomic_path(files[i]) as tmp:
                    im.convert("RGB").save(tmp, format="PNG")
            progress.advance(len(idx))
        progress.close()
    return GenerationReport(files=files, generated=len(todo), cached=count - len(todo))
