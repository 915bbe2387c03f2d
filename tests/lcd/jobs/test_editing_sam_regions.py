"""`sam:<selection>` regions of edit manifests: resolved on the masks stage's store (lcd.masks)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from lcd.config import ModelsConfig
from lcd.errors import InputImageError
from lcd.io.images import load_image
from lcd.jobs.editing import run_edit_shard
from lcd.jobs.regions import load_region
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
    from lcd.masks.postprocess import postprocess_mask

    for rule in ("largest", "best", "id:0"):
        want, _ = select_mask(out, "cat_00", rule)
        got = load_region(_item(scene, f"sam:{rule}"), image, out)
        assert got.dtype == bool and got.shape == image.shape[:2]
        # post-processed as `lcd edit --masks` does: masks.fill_holes (on by default), masks.dilate_px
        np.testing.assert_array_equal(got, postprocess_mask(want, fill=True, dilate_px=0))
        raw = load_region(_item(scene, f"sam:{rule}"), image, out, masks_cfg=MasksConfig(fill_holes=False))
        np.testing.assert_array_equal(raw, want)
    grown = load_region(_item(scene, "sam:largest"), image, out, masks_cfg=MasksConfig(dilate_px=4))
    assert grown.sum() > load_region(_item(scene, "sam:largest"), image, out).sum()
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


def test_bad_parts_in_the_store_fail_only_the_items_that_need_them(store, tmp_path):
    """A 0-byte, a corrupt and a wrong-schema part used to sink the whole shard, `box:` items too.
    Now they are skipped: items whose masks are in good parts are edited, an image whose masks
    were only in a bad part is that item's failure naming the parts, and `box:` items go on."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lcd.config import EditConfig

    scene, out = store
    bad_store = tmp_path / "store"
    shutil.copytree(out, bad_store)
    parts = bad_store / "masks"
    (parts / "part-00090.parquet").write_bytes(b"")
    (parts / "part-00091.parquet").write_bytes(b"PAR1 garbage, not a footer")
    pq.write_table(pa.table({"foo": [1, 2]}), parts / "part-00092.parquet")
    ghost = tmp_path / "ghost.jpg"  # its masks "were" in the corrupt part: none readable now
    shutil.copy(scene, ghost)
    items = [_item(scene, "sam:largest"),
             ManifestItem(id="b", image=str(scene), select="box:0,0,32,32", prompt="a dog", seed=0),
             ManifestItem(id="g", image=str(ghost), select="sam:largest", prompt="a dog", seed=0)]
    rep = run_edit_shard(items, out_root=tmp_path / "o", cfg=EditConfig(steps=2, size=64), models=ModelsConfig(sd="unused"),
                         engine="noop", masks_store=bad_store)
    assert sorted(r["id"] for r in rep.results if r["status"] == "edited") == ["b", "x"]
    (fail,) = rep.failures
    assert fail["id"] == "g" and "ghost: no masks stored" in fail["message"]
    assert "3 unreadable part(s) skipped" in fail["message"] and "part-00090.parquet" in fail["message"]


def test_edit_is_redone_when_the_stored_masks_change_not_when_the_store_moves(store, tmp_path, tiny_dir):
    """The item hash covers the masks a `sam:` rule reads, not just the rule's text."""
    from lcd.config import EditConfig

    scene, out = store
    item = _item(scene, "sam:largest")
    run = lambda masks: run_edit_shard([item], out_root=tmp_path / "edits-out", cfg=EditConfig(steps=2, size=64),
                                       models=ModelsConfig(sd="unused"), engine="noop", masks_store=masks)
    assert [r["status"] for r in run(out).results] == ["edited"]
    assert [r["status"] for r in run(out).results] == ["skipped"]
    moved = tmp_path / "moved-store"
    shutil.copytree(out, moved)
    assert [r["status"] for r in run(moved).results] == ["skipped"]  # same rows, other folder
    grown = run_edit_shard([item], out_root=tmp_path / "edits-out", cfg=EditConfig(steps=2, size=64),
                           models=ModelsConfig(sd="unused"), engine="noop", masks_store=out,
                           masks_cfg=MasksConfig(dilate_px=3))
    assert [r["status"] for r in grown.results] == ["edited"]  # another dilation is another region
    assert [r["status"] for r in run(out).results] == ["edited"]  # and back
    # the same image, masked again with other settings: other rows -> the edit is redone
    cfg = MasksConfig.model_validate({"auto": {"points_per_side": 3, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}})
    models = ModelsConfig(sd=str(tiny_dir / "sd"), sam=str(tiny_dir / "sam" / "sam_vit_tiny.pth"), sam_type="vit_tiny")
    other = precompute_masks([scene], tmp_path / "other-store", cfg, models)
    rows = run(other).results
    assert [r["status"] for r in rows] == ["edited"]
    # a store without this image fails the item at hashing time, naming it
    empty = precompute_masks([], tmp_path / "empty-store", cfg, models)
    rep = run(empty)
    assert not rep.results and rep.failures[0]["id"] == "x" and "x: " in rep.failures[0]["message"]


def test_text_rule_loads_clip_and_picks_the_text_scored_mask(store, tmp_path, tiny_dir):
    from lcd.config import EditConfig
    from lcd.models.loader import load_clip

    scene, out = store
    items = [_item(scene, "sam:text:a cat"), ManifestItem(id="y", image=str(scene), select="sam:largest",
                                                          prompt="a dog", seed=0)]
    models = ModelsConfig(sd="unused", clip=str(tiny_dir / "clip"))
    rep = run_edit_shard(items, out_root=tmp_path, cfg=EditConfig(steps=2, size=64), models=models, engine="noop",
                         masks_store=out)
    assert sorted(r["id"] for r in rep.results) == ["x", "y"] and not rep.failures
    model, processor, _ = load_clip(tiny_dir / "clip")
    from lcd.masks.postprocess import postprocess_mask

    want, _ = select_mask(out, "cat_00", "text:a cat", clip=(model, processor), image=load_image(scene))
    want = postprocess_mask(want, fill=True, dilate_px=0)
    # before CLIP was loaded for the shard, the text item failed with "needs ... a CLIP model"
    got = load_region(items[0], load_image(scene), out, (model, processor))
    np.testing.assert_array_equal(got, want)
    # without a loadable CLIP only the text item fails, and its message names the weights
    rep = run_edit_shard(items, out_root=tmp_path / "b", cfg=EditConfig(steps=2, size=64),
                         models=models.model_copy(update={"clip": str(tmp_path / "no-clip")}), engine="noop",
                         masks_store=out)
    assert [r["id"] for r in rep.results] == ["y"] and [f["id"] for f in rep.failures] == ["x"]
    assert "no-clip" in rep.failures[0]["message"]


def test_the_used_region_is_saved_beside_the_output_and_feeds_the_contact_sheet(store, tmp_path):
    from lcd.config import EditConfig
    from lcd.io.images import load_mask
    from lcd.jobs.contact import result_triples
    from lcd.jobs.layout import region_path

    scene, out = store
    items = [_item(scene, "sam:largest")]
    rep = run_edit_shard(items, out_root=tmp_path, cfg=EditConfig(steps=2, size=64), models=ModelsConfig(sd="unused"),
                         engine="noop", masks_store=out)
    from lcd.masks.postprocess import postprocess_mask

    want = postprocess_mask(select_mask(out, "cat_00", "largest")[0], fill=True, dilate_px=0)
    np.testing.assert_array_equal(load_mask(region_path(tmp_path, "x")), want)
    # the sheet needs neither the store nor CLIP once the region is saved
    triples, problems = result_triples({"x": items[0]}, rep.results, tmp_path, masks_store=None)
    assert not problems and np.array_equal(triples[0][1], want)
    # a row whose files are gone is left blank and named, the sheet is still made
    region_path(tmp_path, "x").unlink()
    triples, problems = result_triples({"x": items[0]}, rep.results, tmp_path, masks_store=None)
    assert len(triples) == 1 and problems and problems[0].startswith("x: contact sheet row left blank")
