"""Model weights at a URL (lcd.models.remote): the tiny SD as a diffusers folder under an s3://
prefix and SAM as one checkpoint object, fetched once into the fetch cache, loaded offline by the
production loaders after the trust check, with the same pixels and content pin as the local copy."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lcd.config import EditConfig, ModelsConfig
from lcd.edit.engine import EditItem, edit_images
from lcd.errors import ModelLoadError
from lcd.jobs.hashes import model_pin
from lcd.models.pipeline import load_sd
from tests.s3server import gets, request_log, s3, s3_endpoint  # noqa: F401 - the fixtures

SD_URL = "s3://lcd-test/models/tiny-sd"


def _edit(models: ModelsConfig) -> tuple[np.ndarray, object]:
    img = np.random.RandomState(0).randint(0, 256, (64, 64, 3), dtype=np.uint8)
    mask = np.zeros((64, 64), bool)
    mask[16:48, 16:48] = True
    lp = load_sd(models).lp
    out = edit_images(lp, [EditItem(img, mask, "a photo of a dog", seed=3, name="it")], EditConfig(steps=2, size=64))
    return out[0].image, lp.source


def test_tiny_sd_at_an_s3_prefix_edits_as_the_local_folder_and_is_fetched_once(s3, tiny_dir):
    s3.put(str(tiny_dir / "sd"), "lcd-test/models/tiny-sd", recursive=True)
    n_objects = len(s3.find("lcd-test/models/tiny-sd"))
    # what a hub repository mirrored to a bucket holds beside the components, and loading never reads
    s3.pipe({"lcd-test/models/tiny-sd/v1-5-pruned.ckpt": b"x" * 1000,
             "lcd-test/models/tiny-sd/safety_checker/model.safetensors": b"x" * 1000})
    local_img, local_src = _edit(ModelsConfig(sd=str(tiny_dir / "sd")))
    log = request_log(SD_URL)
    url_img, url_src = _edit(ModelsConfig(sd=SD_URL))
    np.testing.assert_array_equal(url_img, local_img)
    assert url_src.ref == SD_URL and url_src.sha256 == local_src.sha256 and url_src.weights == local_src.weights
    assert len(gets(log)) == n_objects > 5 and not [k for k in gets(log) if "ckpt" in k or "safety" in k]
    log.clear()
    again, _ = _edit(ModelsConfig(sd=SD_URL))  # a second load on this machine: a listing, no GET
    np.testing.assert_array_equal(again, local_img)
    assert gets(log) == []
    # the output pin is read off the listing (no GET), and changes when an object changes
    pin = model_pin(SD_URL, None)
    assert pin.startswith("url:") and gets(log) == []
    s3.pipe({"lcd-test/models/tiny-sd/scheduler/scheduler_config.json":
             json.dumps(json.loads((tiny_dir / "sd/scheduler/scheduler_config.json").read_text()) | {"x": 1}).encode()})
    assert model_pin(SD_URL, None) != pin


def test_a_folder_at_a_url_naming_code_is_refused_by_the_trust_check(s3, tiny_dir):
    s3.put(str(tiny_dir / "sd"), "lcd-test/models/evil-sd", recursive=True)
    index = json.loads((tiny_dir / "sd/model_index.json").read_text())
    index["unet"] = ["evil_module", "Backdoor"]
    s3.pipe({"lcd-test/models/evil-sd/model_index.json": json.dumps(index).encode()})
    with pytest.raises(ModelLoadError, match="evil_module") as e:
        load_sd(ModelsConfig(sd="s3://lcd-test/models/evil-sd"))
    assert "\n" not in str(e.value)


def test_sam_checkpoint_object_and_clip_folder_load_and_a_missing_url_is_one_line(s3, tiny_dir):
    from lcd.models.loader import load_clip, load_sam

    ckpt = next((tiny_dir / "sam").glob("*.pth"))
    s3.put_file(str(ckpt), f"lcd-test/sam/{ckpt.name}")
    _, local = load_sam(ckpt, "vit_tiny")
    _, remote = load_sam(f"s3://lcd-test/sam/{ckpt.name}", "vit_tiny")
    assert remote.sha256 == local.sha256 and remote.ref == f"s3://lcd-test/sam/{ckpt.name}"
    s3.put(str(tiny_dir / "clip"), "lcd-test/clip", recursive=True)
    _, _, clip_local = load_clip(tiny_dir / "clip")
    _, _, clip_remote = load_clip("s3://lcd-test/clip")
    assert clip_remote.sha256 == clip_local.sha256 and clip_remote.ref == "s3://lcd-test/clip"
    with pytest.raises(ModelLoadError, match=r"^s3://lcd-test/sam/nope.pth: file not found$"):
        load_sam("s3://lcd-test/sam/nope.pth", "vit_tiny")
    with pytest.raises(ModelLoadError, match=r"^s3://lcd-test/models/none: file not found"):
        load_sd(ModelsConfig(sd="s3://lcd-test/models/none"))
