"""`sam:<selection>` regions of edit manifests: resolved on the masks stage's store (lcd.masks)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from lcd.config import ModelsConfig
from lcd.errors import InputImageError
from lcd.io.images import load_image
from lcd.jobs.editing import load_region, run_edit_shard
from lcd.jobs.manifest import ManifestItem
from lcd.jobs.masking import precompute_masks
from lcd.masks.config import MasksConfig
from lcd.masks.read import select_mask

from tests.conftest import SAMPLES


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_dir):
    root = tmp_path_factory.mktemp("sam-store")
    scene = root / "cat_00.jpg"
    shutil.copy(SAMPLES / "scenes" / "cat_00.jpg", scene)
    cfg = MasksConfig.model_validate({"auto": {"points_per_side": 2, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}})
    models = ModelsConfig(sd=str(tiny_dir / "sd"), sam=str(tiny_dir / "sam" / "sam_vit_tiny.pth"), sam_type="vit_tiny")
    out = precompute_masks([scene], root / "masks", cfg, models)
    return scene, out


def _item(scene, select):
    return ManifestItem(id="x", image=str(scene), select=select, prompt="a photo of a dog", seed=0)


def test_sam_rules_return_the_stored_mask(store):
    scene, out = store
    image = load_image(scene)
    for rule in ("largest", "best", "id:0"):
        want, _ = select_mask(out, "cat_00", rule)
        got = load_region(_item(scene, f"sam:{rule}"), image, out)
        assert got.dtype == bool and got.shape == image.shape[:2]
        np.testing.assert_array_equal(got, want)
    # box: without the prefix is still the plain rectangle, not a stored mask
    assert load_region(_item(scene, "box:0,0,8,8"), image, out).sum() == 64


def test_sam_rule_errors_name_the_item(store):
    scene, out = store
    image = load_image(scene)
    with pytest.raises(InputImageError, match="x: region 'sam:largest' needs the masks store"):
        load_region(_item(scene, "sam:largest"), image, None)
    with pytest.raises(InputImageError, match="x: .*expected largest"):
        load_region(_item(scene, "sam:biggest"), image, out)
    with pytest.raises(InputImageError, match="x: "):
        load_region(_item(scene, "sam:id:9999"), image, out)


def test_edit_shard_uses_stored_masks(store, tmp_path):
    scene, out = store
    items = [_item(scene, "sam:largest"), ManifestItem(id="y", image=str(scene), select="sam:id:9999",
                                                       prompt="a dog", seed=0)]
    rep = run_edit_shard(items, out_root=tmp_path, cfg=__import__("lcd.config").config.EditConfig(steps=2, size=64),
                         models=ModelsConfig(sd="unused"), engine="noop", masks_store=out)
    assert [r["id"] for r in rep.results] == ["x"] and [f["id"] for f in rep.failures] == ["y"]
    assert (tmp_path / "edits" / "x.png").exists()
