"""The masks store on object storage: the masks stage writes it to an s3:// URL (parts staged
locally, each uploaded whole), a re-run skips what the bucket's parts list, and readers use it in
place by footer and row group (footers cached per machine by ETag), giving the same masks,
digests and edit regions as the same store on local disk."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lcd.config import EditConfig, ModelsConfig
from lcd.io.images import load_mask
from lcd.jobs.editing import run_edit_shard
from lcd.jobs.manifest import read_manifest
from lcd.jobs.masking import mask_scenes
from lcd.masks.config import AutoMaskConfig, MasksConfig
from lcd.masks.read import select_mask, stored_masks_digest
from lcd.masks.store import MaskStore, done_images
from tests.s3server import gets, request_log, s3, s3_endpoint  # noqa: F401 - the fixtures

URL = "s3://lcd-test/run/masks"
RULES = ["largest", "best", "id:1", "point:20,20", "box:0,0,40,40"]
FAST = MasksConfig(auto=AutoMaskConfig(points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0),
                   images_per_part=2, row_group_rows=4)  # conftest's fast_cfg, for a module fixture


@pytest.fixture(scope="module")
def masked(tmp_path_factory, tiny_dir):
    """Three scenes masked by the tiny SAM into a local store, once for the module (SAM is the
    slow part): (images, local store folder, models)."""
    from tests.lcd.masks.conftest import _write_images

    root = tmp_path_factory.mktemp("masked")
    images = _write_images(root / "scenes", 3)
    models = ModelsConfig(sam=str(tiny_dir / "sam" / "sam_vit_tiny.pth"), sam_type="vit_tiny")
    mask_scenes(images, root / "local", FAST, models)
    return images, root / "local", models


@pytest.fixture
def stores(masked, s3):
    """The local store, and the same parts in the bucket at URL."""
    images, local, models = masked
    s3.put(str(local), "lcd-test/run/masks", recursive=True)
    return images, local, models


def test_the_masks_stage_writes_to_s3_and_a_rerun_skips_what_the_bucket_holds(masked, s3, tmp_path):
    images, local, models = masked
    images = [tmp_path / p.name for p in images[:1]]
    for p, src in zip(images, masked[0]):
        p.write_bytes(src.read_bytes())
    url = "s3://lcd-test/stage/masks"
    summary = mask_scenes(images, url, FAST, models)
    keys = sorted(s3.find("lcd-test/stage/masks"))
    assert summary.done == 1 and summary.parts == [f"s3://{k}" for k in keys if "/part-" in k]
    assert [k.rsplit("/", 1)[-1][:10] for k in keys if "/part-" in k] == ["part-00000"]
    assert not [k for k in keys if k.endswith(".tmp")]
    assert set(done_images(url)) == {k for k in done_images(local) if k[0] == "img0"} and len(done_images(url)) == 1
    again = mask_scenes(images, url, FAST, models)
    assert (again.done, again.skipped, again.parts) == (0, 1, [])
    # a changed scene is recomputed into a new part numbered after the store's newest
    from PIL import Image

    Image.fromarray(np.full((48, 64, 3), 99, np.uint8)).save(images[0])
    third = mask_scenes(images, url, FAST, models)
    assert (third.done, third.skipped) == (1, 0) and third.parts[0].startswith(url + "/masks/part-00001-")
    assert MaskStore(url).by_image["img0"] == summary.parts + third.parts  # both list it; rows come from the last


def test_a_store_at_s3_gives_the_masks_and_digests_of_the_local_store_reading_only_row_groups(stores, s3):
    _, local, _ = stores
    here, there = MaskStore(local), MaskStore(URL)
    assert sorted(there.by_image) == sorted(here.by_image) == ["img0", "img1", "img2"]
    for image_id in here.by_image:
        assert stored_masks_digest(there, image_id) == stored_masks_digest(here, image_id)
        for rule in RULES:
            (m1, r1), (m2, r2) = select_mask(here, image_id, rule), select_mask(there, image_id, rule)
            np.testing.assert_array_equal(m2, m1)
            assert r2 == r1
    log = request_log(URL)
    again = MaskStore(URL)  # footers from this machine's cache: one listing, no GET
    assert gets(log) == [] and [op for op, _ in log] == ["ListObjectsV2"]
    select_mask(again, "img2", "largest")  # only the part that lists img2 is read
    part = again.by_image["img2"][-1].split("lcd-test/", 1)[1]
    assert set(gets(log)) == {part}


def test_an_edit_shard_with_sam_regions_from_s3_edits_the_regions_of_the_local_store(stores, tmp_path):
    images, local, _ = stores
    lines = [{"id": f"e{k}-{r.split(':')[0]}", "image": str(p), "select": f"sam:{r}", "prompt": "a dog"}
             for k, p in enumerate(images) for r in ("largest", "point:20,20")]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    items = read_manifest(tmp_path / "m.jsonl")[0]
    cfg = EditConfig(size=64)
    a = run_edit_shard(items, out_root=tmp_path / "a", cfg=cfg, models=ModelsConfig(), engine="noop", masks_store=local)
    b = run_edit_shard(items, out_root=tmp_path / "b", cfg=cfg, models=ModelsConfig(), engine="noop", masks_store=URL)
    assert a.counts() == b.counts() == {"edited": 6, "skipped": 0, "failed": 0}
    for it in items:
        np.testing.assert_array_equal(load_mask(tmp_path / "b" / "regions" / f"{it.id}.png"),
                                      load_mask(tmp_path / "a" / "regions" / f"{it.id}.png"))
    assert sorted(r["input_hash"] for r in b.results) == sorted(r["input_hash"] for r in a.results)
    missing = run_edit_shard(items[:1], out_root=tmp_path / "c", cfg=cfg, models=ModelsConfig(), engine="noop",
                             masks_store="s3://lcd-test/no-store")
    assert "needs the masks store" in missing.failures[0]["message"]
