"""Shared fixtures: tiny models written once per session through the real save formats."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# flows called in-process start an ephemeral server; on 2 busy cores its default 20 s can run out
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

REPO = Path(__file__).resolve().parents[1]
# subprocesses (`python -m lcd ...`, flows, dvc stages) import this checkout's code first
os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
SAMPLES = REPO / "samples"
# LCD_DREAMBENCH overrides (a git worktree is not beside ../shared)
SHARED_DREAMBENCH = Path(os.environ.get("LCD_DREAMBENCH", REPO.parent / "shared" / "dreambench"))


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """Root of the tiny models (sd/, sd-inpaint/, sam/, clip/), written by `write_tiny_models`."""
    from lcd.models.tiny import write_tiny_models

    root = tmp_path_factory.mktemp("tiny-models")
    write_tiny_models(root)
    return root


@pytest.fixture(scope="session")
def tiny_sd(tiny_dir):
    """The tiny 4-channel SD pipeline loaded through the production loader."""
    from lcd.models.loader import load_sd_pipeline

    return load_sd_pipeline(tiny_dir / "sd")


@pytest.fixture
def dreambench() -> Path:
    """The full DreamBench copy beside the checkout (CI has it; a user's clone may not)."""
    if not SHARED_DREAMBENCH.exists():
        pytest.skip("../shared/dreambench not present")
    return SHARED_DREAMBENCH


@pytest.fixture
def bigmem():
    """Hold /tmp/lcd-bigmem.lock for the test: tests that need more than ~3 GB of memory
    (full-size SD1.5/SDXL/SAM-H random weights, 12 MP photos) run one at a time across pytest
    workers, so two of them never sum past a 24 GB machine."""
    import fcntl

    with open(os.environ.get("LCD_BIGMEM_LOCK", "/tmp/lcd-bigmem.lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
