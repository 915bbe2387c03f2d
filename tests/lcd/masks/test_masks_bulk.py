"""Bulk masks: Parquet with the declared schema, failures table, skip-by-sha256, kill + resume."""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from lcd.errors import LcdError
from lcd.masks.bulk import compute_masks
from lcd.masks.manifest import ManifestItem, read_manifest
from lcd.masks.store import FAILURE_SCHEMA, MASK_SCHEMA, part_paths, read_failures, read_masks


def _ids(out):
    t = pq.read_table(out / "masks", schema=MASK_SCHEMA, columns=["image_id", "mask_id"])
    return list(zip(t.column("image_id").to_pylist(), t.column("mask_id").to_pylist()))


@pytest.mark.slow
def test_bulk_run_writes_declared_schema_and_failures(tiny_sam, fast_cfg, manifest_csv, tmp_path):
    sam, model = tiny_sam
    out = tmp_path / "out"
    items = read_manifest(manifest_csv)
    s = compute_masks(items, sam, model, fast_cfg, out)
    assert (s.done, s.failed, s.skipped, s.encoder_passes) == (4, 4, 0, 4)
    # pyarrow: every part has exactly the declared schema, row groups of row_group_rows
    for p in part_paths(out):
        assert pq.read_schema(p).remove_metadata().equals(MASK_SCHEMA)
        md = pq.read_metadata(p)
        assert all(md.row_group(i).num_rows <= fast_cfg.row_group_rows for i in range(md.num_row_groups))
    assert len(part_paths(out)) == 2  # 4 good images, 2 per part
    table = ds.dataset(out / "masks", schema=MASK_SCHEMA).to_table()
    df = pd.read_parquet(out / "masks")
    assert len(df) == table.num_rows == s.masks > 4 * 7
    assert set(df["source"]) == {"point", "box", "auto"} and set(df["image_id"]) == {f"im{i}" for i in range(4)}
    assert not df.duplicated(["image_id", "mask_id"]).any()
    row = df[(df.image_id == "im0") & (df.source == "box")].iloc[0]
    assert list(row["prompt"]["box"]) == [8, 6, 45, 32] and list(row["rle"]["size"]) == [48, 64]
    assert row["model"]["sha256"] == model["sha256"] and len(row["image_sha256"]) == 64
    # failures: each bad input named, with its error; the batch went on past them
    f = pd.read_parquet(out / "failures.parquet")
    assert pq.read_schema(out / "failures.parquet").equals(FAILURE_SCHEMA)
    errs = dict(zip(f.image_id, f.error))
    assert set(errs) == {"notimg", "trunc", "missing", "badprompt"}
    assert "not an image file" in errs["notimg"] and "corrupt or truncated" in errs["trunc"]
    assert "file not found" in errs["missing"] and "box must be" in errs["badprompt"]
    # the read API returns masks equal to what the rows say
    rows, masks = read_masks(out, "im1")
    assert masks.shape == (rows.num_rows, 48, 64)
    assert masks.sum(axis=(1, 2)).tolist() == rows.column("area").to_pylist()


@pytest.mark.slow
def test_rerun_skips_stored_images_and_retries_failures(tiny_sam, fast_cfg, manifest_csv, tmp_path):
    sam, model = tiny_sam
    fast_cfg = fast_cfg.model_copy(update={"automatic": False})  # prompts only: skipping is what is tested
    out = tmp_path / "out"
    items = read_manifest(manifest_csv)
    compute_masks(items[:3], sam, model, fast_cfg, out)
    before = _ids(out)
    s = compute_masks(items, sam, model, fast_cfg, out)
    assert (s.skipped, s.done, s.encoder_passes) == (2, 2, 2)
    after = _ids(out)
    assert len(after) == len(set(after)) and set(before) <= set(after)
    assert sorted(read_failures(out).column("image_id").to_pylist()) == ["badprompt", "missing", "notimg", "trunc"]
    # the file changed under the same id: it is recomputed, and readers get the new masks
    (tmp_path / "imgs" / "img0.png").write_bytes((tmp_path / "imgs" / "img3.png").read_bytes())
    s = compute_masks(items, sam, model, fast_cfg, out)
    assert (s.done, s.skipped, s.failed) == (1, 3, 4)  # only im0 is recomputed; failures retried
    rows, _ = read_masks(out, "im0")
    assert set(rows.column("image_sha256").to_pylist()) == set(read_masks(out, "im3")[0].column("image_sha256").to_pylist())


KILL_SCRIPT = """
import os, signal, sys
from lcd.masks.bulk import compute_masks
from lcd.masks.config import MasksConfig
from lcd.masks.manifest import read_manifest
from lcd.models.loader import load_sam
sam, src = load_sam(sys.argv[1], "vit_tiny")
cfg = MasksConfig.model_validate_json(sys.argv[4])
seen = []
def after(image_id):
    seen.append(image_id)
    if len(seen) == int(sys.argv[3]):
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no flush: like an OOM kill
model = {"type": "vit_tiny", "ref": src.ref, "sha256": src.sha256, "revision": src.revision}  # as the tiny_sam fixture
compute_masks(read_manifest(sys.argv[2]), sam, model, cfg, sys.argv[5], after_image=after)
"""


@pytest.mark.slow
def test_killed_run_resumes_without_redoing_or_duplicating(tiny_sam, fast_cfg, tmp_path, tiny_dir, write_images):
    imgs = write_images(tmp_path / "imgs", 4)
    manifest = tmp_path / "m.csv"
    pd.DataFrame({"image": [str(p) for p in imgs]}).to_csv(manifest, index=False)
    out = tmp_path / "out"
    ckpt = str(tiny_dir / "sam" / "sam_vit_tiny.pth")
    proc = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, ckpt, str(manifest), "3", fast_cfg.model_dump_json(), str(out)],
        capture_output=True, text=True, env=os.environ.copy(),
    )
    assert proc.returncode == -9, proc.stderr[-2000:]
    # images 1-2 were written as one whole part, image 3 (killed right after it was reported) as
    # its checkpoint part: nothing finished is lost; no temp file is visible
    assert len(part_paths(out)) == 2
    first = _ids(out)
    assert {i for i, _ in first} == {imgs[0].stem, imgs[1].stem, imgs[2].stem}  # ids default to file stems
    sam, model = tiny_sam
    calls = []
    hook = sam.image_encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        s = compute_masks(read_manifest(manifest), sam, model, fast_cfg, out)
    finally:
        hook.remove()
    assert (s.skipped, s.done, len(calls)) == (3, 1, 1)  # finished images not redone
    final = _ids(out)
    assert len(final) == len(set(final)) and set(first) <= set(final)
    assert {i for i, _ in final} == {p.stem for p in imgs}


def test_manifest_errors(tmp_path):
    with pytest.raises(LcdError, match="manifest not found"):
        read_manifest(tmp_path / "none.csv")
    (tmp_path / "a.csv").write_text("path\nx.png\n")
    with pytest.raises(LcdError, match=r"needs an 'image' column .*\['path'\]"):
        read_manifest(tmp_path / "a.csv")
    (tmp_path / "b.csv").write_text("image,image_id\nx.png,a\ny.png,a\n")
    with pytest.raises(LcdError, match="image_id 'a' appears more than once"):
        read_manifest(tmp_path / "b.csv")
    (tmp_path / "c.parquet").write_text("garbage")
    with pytest.raises(LcdError, match="cannot read manifest as Parquet"):
        read_manifest(tmp_path / "c.parquet")


def test_bad_prompts_json_and_text_without_clip_are_recorded(tiny_sam, fast_cfg, tmp_path, write_images):
    sam, model = tiny_sam
    (img,) = write_images(tmp_path / "imgs", 1)
    items = [ManifestItem("a", str(img), "{not json"), ManifestItem("b", str(img), '{"box": [0, 0, 1, 1]}'),
             ManifestItem("c", str(img), '[{"text": "a dog"}]')]
    s = compute_masks(items, sam, model, fast_cfg.model_copy(update={"automatic": False}), tmp_path / "o")
    assert s.failed == 3 and s.done == 0 and part_paths(tmp_path / "o") == []
    f = dict(zip(*read_failures(tmp_path / "o").select(["image_id", "error"]).to_pydict().values()))
    assert "prompts is not valid JSON" in f["a"] and "must be a JSON list" in f["b"]
    assert "text prompts but no CLIP model" in f["c"]


def test_read_api_errors(tiny_sam, fast_cfg, tmp_path, write_images):
    sam, model = tiny_sam
    (img,) = write_images(tmp_path / "imgs", 1)
    compute_masks([ManifestItem("a", str(img), None)], sam, model, fast_cfg, tmp_path / "o")
    with pytest.raises(LcdError, match="zz: no masks stored for this image_id"):
        read_masks(tmp_path / "o", "zz")
    with pytest.raises(LcdError, match="masks table not found"):
        read_masks(tmp_path / "nothing", "a")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LcdError, match=r"no mask parts \(part-\*.parquet\)"):
        read_masks(tmp_path / "empty", "a")
    # a single part file works as the table too
    rows, masks = read_masks(part_paths(tmp_path / "o")[0], "a")
    assert masks.shape[0] == rows.num_rows >= 1


def test_text_prompt_without_candidate_masks_is_recorded(tiny_sam, tiny_clip, fast_cfg, tmp_path, write_images):
    sam, model = tiny_sam
    (img,) = write_images(tmp_path / "imgs", 1)
    cfg = fast_cfg.model_copy(update={"automatic": False})
    s = compute_masks([ManifestItem("t", str(img), '[{"text": "a dog"}]')], sam, model, cfg, tmp_path / "o",
                      clip=tiny_clip)
    assert s.failed == 1
    assert "no point/box/automatic masks to choose from" in read_failures(tmp_path / "o").column("error")[0].as_py()
    # with a box prompt there is a candidate: the text mask is a copy of the CLIP-best one
    s = compute_masks([ManifestItem("u", str(img), '[{"box": [5, 5, 40, 30]}, {"text": "a dog"}]')], sam, model,
                      cfg, tmp_path / "o", clip=tiny_clip)
    rows, masks = read_masks(tmp_path / "o", "u")
    assert rows.column("source").to_pylist() == ["box", "text"] and np.array_equal(masks[0], masks[1])
    assert rows.column("prompt").to_pylist()[1]["text"] == "a dog"


def test_parquet_manifest_defaults_image_id_to_the_file_stem(tmp_path):
    import pyarrow as pa

    pq.write_table(pa.table({"image": ["a.png", "http://127.0.0.1:1/b.jpg"], "prompts": ['[{"box": [0, 0, 1, 1]}]', None]}),
                   tmp_path / "m.parquet")
    items = read_manifest(tmp_path / "m.parquet")
    assert [(i.image_id, i.image, i.prompts_json) for i in items] == [
        ("a", "a.png", '[{"box": [0, 0, 1, 1]}]'), ("b", "http://127.0.0.1:1/b.jpg", None)]


def test_unreachable_url_is_recorded(tiny_sam, fast_cfg, tmp_path):
    sam, model = tiny_sam
    s = compute_masks([ManifestItem("u", "http://127.0.0.1:9/none.jpg")], sam, model, fast_cfg, tmp_path / "o")
    assert s.failed == 1
    assert "u: cannot download http://127.0.0.1:9/none.jpg" in read_failures(tmp_path / "o").column("error")[0].as_py()


def test_images_by_url_from_a_local_http_server(tiny_sam, fast_cfg, tmp_path, write_images):
    import functools
    import http.server
    import threading

    sam, model = tiny_sam
    (img,) = write_images(tmp_path / "www", 1)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "www"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{img.name}"
        cfg = fast_cfg.model_copy(update={"automatic": False})
        s = compute_masks([ManifestItem("web", url, '[{"box": [5, 5, 40, 30]}]'),
                           ManifestItem("404", url + ".missing")], sam, model, cfg, tmp_path / "o")
    finally:
        server.shutdown()
    assert (s.done, s.failed) == (1, 1)
    rows, masks = read_masks(tmp_path / "o", "web")
    assert rows.column("image").to_pylist() == [url] and masks.shape == (1, 48, 64)
    assert "404" in read_failures(tmp_path / "o").column("error")[0].as_py()


def test_settings_that_change_masks_decide_a_rerun_and_storage_settings_do_not(tiny_sam, fast_cfg, tmp_path,
                                                                                write_images, caplog):
    """A changed threshold (or points grid, or prompts) recomputes the images it affects, and readers
    get the new masks; part size, codec and read-time post-processing (dilate) redo nothing."""
    import logging

    from lcd.masks.store import MaskStore

    sam, model = tiny_sam
    paths = write_images(tmp_path / "imgs", 3)
    items = [ManifestItem(image_id=f"im{i}", image=str(p)) for i, p in enumerate(paths)]
    out = tmp_path / "out"
    first = compute_masks(items, sam, model, fast_cfg, out)
    assert (first.done, first.recomputed, first.skipped) == (3, 0, 0)
    n_before = MaskStore(out).rows("im0").num_rows
    with pytest.raises(LcdError, match=r"scenes/im1.png: no masks stored .*3 image id\(s\) \(closest: im1\); ids are the file stems"):
        MaskStore(out).rows("scenes/im1.png")  # a path typed where the id (the stem) belongs: the hint names im1
    # storage and read-time settings: nothing to redo
    same = fast_cfg.model_copy(update={"images_per_part": 7, "parquet_level": 3, "dilate_px": 4, "select": "largest"})
    s = compute_masks(items, sam, model, same, out)
    assert (s.done, s.skipped) == (0, 3)
    # a threshold that drops every mask: all three recomputed, and the store now serves 0 masks for them
    strict = fast_cfg.model_copy(update={"auto": fast_cfg.auto.model_copy(update={"pred_iou_thresh": 1.0})})
    caplog.set_level(logging.INFO, logger="lcd.progress")
    s = compute_masks(items, sam, model, strict, out)
    assert (s.done, s.recomputed, s.skipped) == (3, 3, 0)
    assert n_before > 0 and s.masks == 0
    with pytest.raises(LcdError, match="no masks stored"):
        MaskStore(out).rows("im0")  # the newest part lists im0 with no masks: the old rows are not served
    closing = [r.getMessage() for r in caplog.records if "done" in r.getMessage()][-1]
    assert "3 computed (3 under changed settings)" in closing
    # new prompts for one image recompute that image only
    from dataclasses import replace

    prompted = [replace(items[0], prompts_json=json.dumps([{"box": [8, 6, 45, 32]}])), *items[1:]]
    s = compute_masks(prompted, sam, model, strict, out)
    assert (s.done, s.recomputed, s.skipped) == (1, 1, 2)
    assert MaskStore(out).rows("im0").column("source").to_pylist() == ["box"]
