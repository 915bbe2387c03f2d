"""Fixtures for concept tests: fresh tiny pipelines and a 2-step image generator (the trained
concepts, `concept_set`, are in tests/lcd/conftest.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch


def _generate(pipe, prompt: str, seed: int = 0) -> np.ndarray:
    """2 DDIM steps at 64 px, (64, 64, 3) float in [0, 1]."""
    g = torch.Generator("cpu").manual_seed(seed)
    return pipe(prompt, num_inference_steps=2, height=64, width=64, generator=g, output_type="np").images[0]


@pytest.fixture
def generate():
    return _generate


@pytest.fixture
def fresh_sd(tiny_dir):
    """A new tiny SD pipeline per call (applying a concept mutates it)."""
    from lcd.models.loader import load_sd_pipeline

    return lambda: load_sd_pipeline(tiny_dir / "sd")


# --- SD1.5's real shapes (random weights) -------------------------------------------------------

@pytest.fixture(scope="session")
def sd15_dir(tmp_path_factory):
    """A diffusers folder of SD1.5's exact architecture with random weights, fp16 on disk (~2.1 GB,
    bench/sd15_random.py's builder), written once per session and removed after: per-layer shapes
    differ (K/V of 320, 640 and 1280 channels from 768-wide text), which the tiny models hide."""
    import shutil

    from bench.sd15_random import write_sd15_random

    root = tmp_path_factory.mktemp("sd15-random")
    yield write_sd15_random(root / "sd", dtype="float16", seed=0)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def sd15_session(sd15_dir):
    """The folder loaded once through the production loader, in float32 (exports are compared
    within 1e-5, below fp16's rounding)."""
    from lcd.models.loader import load_sd_pipeline

    return load_sd_pipeline(sd15_dir, dtype="float32").pipe


@pytest.fixture
def sd15_pipe(sd15_session):
    """The session's SD1.5 pipeline, put back after each test: K/V weights restored bit for bit,
    LoRA adapters, textual-inversion tokens and attention processors removed."""
    pipe = sd15_session
    kv = {n: p.detach().clone() for n, p in pipe.unet.named_parameters() if ".attn2.to_" in n}
    n_tokens = len(pipe.tokenizer)
    yield pipe
    pipe.unload_lora_weights()
    if len(pipe.tokenizer) != n_tokens:
        pipe.unload_textual_inversion()
    from diffusers.models.attention_processor import AttnProcessor2_0

    pipe.unet.set_attn_processor(AttnProcessor2_0())
    params = dict(pipe.unet.named_parameters())
    with torch.no_grad():
        for n, t in kv.items():
            params[n].copy_(t)
    assert len(pipe.tokenizer) == n_tokens
