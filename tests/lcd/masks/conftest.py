"""Fixtures for the masks tests: the tiny SAM through the production loader, small images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lcd.masks.config import AutoMaskConfig, MasksConfig


@pytest.fixture(scope="session")
def tiny_sam(tiny_dir):
    """(Sam, model row) for the tiny vit_tiny SAM."""
    from lcd.models.loader import load_sam

    sam, src = load_sam(tiny_dir / "sam" / "sam_vit_tiny.pth", "vit_tiny")
    return sam, {"type": "vit_tiny", "ref": src.ref, "sha256": src.sha256, "revision": src.revision}


@pytest.fixture(scope="session")
def tiny_clip(tiny_dir):
    from lcd.models.loader import load_clip

    model, processor, _ = load_clip(tiny_dir / "clip")
    return model, processor


@pytest.fixture
def fast_cfg() -> MasksConfig:
    """2x2 automatic grid, no score filtering (random weights score low), 2 images per part."""
    return MasksConfig(
        auto=AutoMaskConfig(points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0),
        images_per_part=2, row_group_rows=4,
    )


def _write_images(root: Path, n: int, size=(48, 64), seed: int = 0) -> list[Path]:
    """n small random-but-structured RGB PNGs (a bright rectangle on noise)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        a = (rng.random((*size, 3)) * 80).astype(np.uint8)
        a[8 + i : 30, 10 : 40 + i] = 230
        p = root / f"img{i}.png"
        Image.fromarray(a).save(p)
        paths.append(p)
    return paths


@pytest.fixture
def write_images():
    """write_images(root, n) -> n small PNG paths (a bright rectangle on dark noise)."""
    return _write_images


PROMPTS = json.dumps([{"points": [[20, 15]]}, {"points": [[5, 5], [30, 20]], "labels": [0, 1]}, {"box": [8, 6, 45, 32]}])


@pytest.fixture
def manifest_csv(tmp_path) -> Path:
    """4 good images with prompts, a non-image, a truncated PNG, a missing file, a bad prompt."""
    imgs = _write_images(tmp_path / "imgs", 4)
    (tmp_path / "imgs" / "text.png").write_text("not an image")
    good = imgs[0].read_bytes()
    (tmp_path / "imgs" / "trunc.png").write_bytes(good[: len(good) // 2])
    import pandas as pd

    rows = [{"image_id": f"im{i}", "image": str(p), "prompts": PROMPTS} for i, p in enumerate(imgs)]
    rows[2:2] = [
        {"image_id": "notimg", "image": str(tmp_path / "imgs" / "text.png"), "prompts": None},
        {"image_id": "trunc", "image": str(tmp_path / "imgs" / "trunc.png"), "prompts": None},
        {"image_id": "missing", "image": str(tmp_path / "imgs" / "nope.png"), "prompts": None},
        {"image_id": "badprompt", "image": str(imgs[0]), "prompts": json.dumps([{"box": [0, 0, 999, 5]}])},
    ]
    path = tmp_path / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path
