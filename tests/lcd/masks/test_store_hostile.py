"""Hostile and broken masks-store rows: checked before any decode, each one item's failure.

A row claiming 10^9 x 10^9 pixels made the RLE decoder raise MemoryError and one of 40,000 x
40,000 took 16 GB, each sinking the whole edit shard. Here every kind of bad row (giant sizes,
a size other than the image's, counts that do not sum or are negative, lying areas, boxes
outside, NaN scores, columns of the wrong type) sits in one store beside good rows, and the
edit shard edits the good items and records each bad one as a failure naming the store part,
the image id and the reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from lcd.config import EditConfig, ModelsConfig
from lcd.errors import LcdError
from lcd.jobs.editing import run_edit_shard
from lcd.jobs.manifest import ManifestItem
from lcd.masks.read import select_mask
from lcd.masks.rle import counts_to_string, encode_rle
from lcd.masks.rows import MaskRowError, check_image_rows
from lcd.masks.store import IMAGES_META, MASK_SCHEMA, MaskStore, write_part

H, W = 48, 64
MODEL = {"type": "vit_tiny", "ref": "r", "sha256": "s", "revision": None}


def row(image_id: str, mask_id: int = 0, *, h: int = H, w: int = W, counts: str | None = None, size=None,
        area: int | None = None, bbox=None, iou: float = 0.9, stab: float = 0.95, mask: np.ndarray | None = None) -> dict:
    """One MASK_SCHEMA row; by default a good 10x10 square mask of an HxW image."""
    if mask is None and counts is None:
        mask = np.zeros((h, w), bool)
        mask[5:15, 5 + mask_id:15 + mask_id] = True
    if mask is not None:
        counts = encode_rle(mask)["counts"]
        area = int(mask.sum()) if area is None else area
        ys, xs = np.nonzero(mask)
        bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)] if bbox is None else bbox
    return {"image_id": image_id, "image": f"{image_id}.png", "image_sha256": "ab" * 32, "width": w, "height": h,
            "mask_id": mask_id, "source": "auto", "prompt_index": None, "multimask_index": None, "prompt": None,
            "rle": {"size": size or [h, w], "counts": counts}, "bbox": bbox if bbox is not None else [0, 0, 1, 1],
            "area": 0 if area is None else area, "predicted_iou": iou, "stability_score": stab, "model": MODEL}


def listing(rows: list[dict]) -> list[dict]:
    ids = list(dict.fromkeys(r["image_id"] for r in rows))
    return [{"image_id": i, "image_sha256": "ab" * 32, "width": W, "height": H, "n_masks": 1, "settings": "k"}
            for i in ids]


def bad_rows() -> dict[str, tuple[list[dict], str]]:
    """image id -> (its rows, a regex its failure message must match)."""
    n = H * W
    neg = counts_to_string(np.array([n + 5, -5]))
    return {
        "giant": ([row("giant", h=10**9, w=10**9, counts="0")],
                  r"stored mask size 1000000000x1000000000 is 1e\+18 pixels, above the limit"),
        "big40k": ([row("big40k", h=40_000, w=40_000, counts=counts_to_string(np.array([40_000**2 - 100, 100])),
                        area=100, bbox=[0, 0, 1, 1])], r"stored mask size 40000x40000 is 1600 MP, above the limit of 200 MP"),
        "othersize": ([row("othersize", h=32, w=32)], r"stored masks are 32x32 but the image is 64x48"),
        "short": ([row("short", counts=counts_to_string(np.array([n - 1])), area=0, bbox=[0, 0, 0, 0])],
                  rf"RLE counts sum to {n - 1} but size is {H}x{W}={n}"),
        "negative": ([row("negative", counts=neg, area=0, bbox=[0, 0, 0, 0])], r"RLE has a negative run length"),
        "garbage": ([row("garbage", counts="~~~~", area=0)], r"bad RLE counts: .*outside ASCII 48\.\.111"),
        "longnum": ([row("longnum", counts="o" * 12 + "0", area=0)], r"number longer than 8 characters"),
        "unicode": ([row("unicode", counts="4\u00e9", area=0)], r"bad RLE counts: .*outside ASCII 48\.\.111"),
        "liar": ([row("liar", 0), row("liar", 1, area=5000)], r"mask 1: stored area 5000 is outside 0\.\.3072"),
        "liar2": ([row("liar2", 0, area=7)], r"mask 0: stored area 7 but its RLE covers 100 pixels"),
        "sizes": ([row("sizes", 0), row("sizes", 1, size=[H, W + 1], counts=counts_to_string(np.array([H * (W + 1)])),
                                        area=0)], r"mask 1: RLE size 65x48 \(WxH\) differs from its width x height 64x48"),
        "outbox": ([row("outbox", bbox=[60, 0, 10, 10])], r"bbox \[60, 0, 10, 10\] \(XYWH\) is outside the 64x48 mask"),
        "nan": ([row("nan", iou=float("nan"))], r"predicted_iou is nan, not a finite number"),
        "zero": ([row("zero", h=0, w=W, counts="", area=0, bbox=[0, 0, 0, 0])], r"stored mask size 64x0 is not positive"),
    }


GOOD = ("good0", "good1", "good2")


@pytest.fixture
def hostile(tmp_path):
    """A store with good rows for good0..2 and every kind of bad row; scene images for all."""
    store = tmp_path / "store"
    rows = [r for g in GOOD for r in (row(g, 0), row(g, 1))]
    cases = bad_rows()
    rows += [r for rs, _ in cases.values() for r in rs]
    part = write_part(store, rows, listing(rows), {}, 1024, codec="zstd", level=1)
    # a part of another writer whose columns have the wrong types: it cannot be read as MASK_SCHEMA
    typed = pa.table({f.name: pa.array([json.dumps(v) if not isinstance(v, str) else v
                                        for v in [row("types")[f.name]]], pa.string()) for f in MASK_SCHEMA})
    typed = typed.replace_schema_metadata({IMAGES_META: json.dumps(listing([row("types")])).encode()})
    pq.write_table(typed, store / "masks" / "part-00050-foreign.parquet")
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    rng = np.random.default_rng(0)
    for name in [*GOOD, *cases, "types"]:
        Image.fromarray((rng.random((H, W, 3)) * 255).astype(np.uint8)).save(scenes / f"{name}.png")
    return store, part, scenes, cases


def _shard(store, scenes, ids, tmp_path):
    items = [ManifestItem(id=f"e-{i}", image=str(scenes / f"{i}.png"), select="sam:largest", prompt="a dog", seed=0)
             for i in ids]
    return run_edit_shard(items, out_root=tmp_path / "out", cfg=EditConfig(steps=2, size=64),
                          models=ModelsConfig(sd="unused"), engine="noop", masks_store=store)


def test_bad_rows_fail_their_items_and_the_good_items_are_edited(hostile, tmp_path):
    store, part, scenes, cases = hostile
    ids = [GOOD[0], *cases, GOOD[1], "types", GOOD[2]]
    rep = _shard(store, scenes, ids, tmp_path)
    assert sorted(r["id"] for r in rep.results if r["status"] == "edited") == [f"e-{g}" for g in GOOD]
    for g in GOOD:
        assert (tmp_path / "out" / "edits" / f"e-{g}.png").exists()
    failed = {f["id"]: f["message"] for f in rep.failures}
    assert set(failed) == {f"e-{i}" for i in [*cases, "types"]}
    import re

    for image_id, (_, pattern) in cases.items():
        msg = failed[f"e-{image_id}"]
        assert "\n" not in msg
        # the store part, the image id and the reason
        assert f"{part}: image {image_id!r}: " in msg, msg
        assert re.search(pattern, msg), (image_id, msg)
    assert "types: no masks stored" in failed["e-types"] and "part-00050-foreign.parquet" in failed["e-types"]
    # the shard's state counts them: a re-run edits nothing again and fails the same items, named the same
    again = _shard(store, scenes, ids, tmp_path)
    assert {r["id"] for r in again.results if r["status"] == "skipped"} == {f"e-{g}" for g in GOOD}
    assert {f["id"]: f["message"] for f in again.failures} == failed


def test_read_api_refuses_bad_rows_before_decoding(hostile):
    store, part, scenes, cases = hostile
    s = MaskStore(store)
    for image_id, (_, pattern) in cases.items():
        for spec in ("largest", "best", "id:0", "point:6,6", "box:0,0,20,20"):
            with pytest.raises(MaskRowError, match=pattern):
                select_mask(s, image_id, spec, image_size=(H, W))
    # the API without the image's size still has the pixel limit, and the caller's own limit
    with pytest.raises(MaskRowError, match="above the limit of 200 MP"):
        select_mask(s, "big40k", "largest")
    with pytest.raises(MaskRowError, match=r"good0': stored mask size 64x48 is 3072 pixels, above the limit of 1000 pixels"):
        select_mask(s, "good0", "largest", max_pixels=1000)
    with pytest.raises(LcdError, match="above the limit"):
        s.masks("giant")  # the decode-everything API checks too


def test_an_image_allowed_above_the_default_limit_allows_its_masks(tmp_path):
    """An edit with max_image_mp above 200 loaded the image; its masks of the same size are fine."""
    h, w = 16_000, 13_000  # 208 MP: over MAX_PIXELS, equal to the image
    r = row("huge", h=h, w=w, counts=counts_to_string(np.array([h * w - 50, 50])), area=50, bbox=[w - 1, h - 50, 1, 50])
    table = pa.Table.from_pylist([r], schema=MASK_SCHEMA)
    with pytest.raises(MaskRowError, match="above the limit of 200 MP"):
        check_image_rows(table, where="p", image_id="huge")
    checked = check_image_rows(table, where="p", image_id="huge", image_size=(h, w))
    assert (checked.height, checked.width, checked.area.tolist()) == (h, w, [50])


def test_rows_without_area_or_box_still_select(tmp_path):
    """A part of another writer without the area and bbox columns: areas come from the counts,
    boxes from decoding that one mask when the rule needs them."""
    small, big = np.zeros((H, W), bool), np.zeros((H, W), bool)
    small[1:3, 1:3] = True
    big[20:40, 30:60] = True
    rows = [row("legacy", 0, mask=small), row("legacy", 1, mask=big)]
    table = pa.Table.from_pylist(rows, schema=MASK_SCHEMA).drop(["area", "bbox"])
    (tmp_path / "masks").mkdir()
    pq.write_table(table.replace_schema_metadata({IMAGES_META: json.dumps(listing(rows)).encode()}),
                   tmp_path / "masks" / "part-00000-old.parquet")
    s = MaskStore(tmp_path)
    assert not s.bad
    for spec, want in (("largest", big), ("box:30,20,60,40", big), ("box:0,0,4,4", small), ("point:2,2", small),
                       ("point:35,25", big)):
        got, r = select_mask(s, "legacy", spec)
        assert np.array_equal(got, want), spec
        assert r["area"] == want.sum() and r["bbox"] == ([30, 20, 30, 20] if want is big else [1, 1, 2, 2])


@pytest.mark.slow
def test_a_40k_row_in_a_shard_allocates_nothing_its_size(hostile, tmp_path):
    """In a process of its own under a 3 GB address-space cap (the 40,000 x 40,000 row took 16 GB):
    the shard edits the good item, fails the giant ones, and its peak RSS stays small."""
    store, part, scenes, cases = hostile
    script = f"""
import json, resource, sys
# VmHWM: this process's own peak (ru_maxrss carries the parent's peak over a vfork+exec)
peak_rss_mb = lambda: int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) / 1024
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
from lcd.config import EditConfig, ModelsConfig
from lcd.jobs.editing import run_edit_shard
from lcd.jobs.manifest import ManifestItem
items = [ManifestItem(id=i, image=f"{scenes}/{{i}}.png", select="sam:largest", prompt="a dog", seed=0)
         for i in ("big40k", "good0", "giant")]
rep = run_edit_shard(items, out_root={str(tmp_path / 'o')!r}, cfg=EditConfig(steps=2, size=64),
                     models=ModelsConfig(sd="unused"), engine="noop", masks_store={str(store)!r})
print(json.dumps({{"edited": [r["id"] for r in rep.results], "failed": {{f["id"]: f["message"] for f in rep.failures}},
                  "maxrss_mb": peak_rss_mb()}}))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=os.environ.copy(),
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["edited"] == ["good0"]
    assert set(out["failed"]) == {"big40k", "giant"} and all("above the limit" in m for m in out["failed"].values())
    assert out["maxrss_mb"] < 600, out
