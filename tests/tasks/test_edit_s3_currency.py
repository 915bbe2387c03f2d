"""On object storage an output is current by the same rule as locally, from the listing's sizes
and ETags: a 0-byte object, a truncated one and one replaced by another item's image are redone,
by the shard and in the coordinator's check (shards_to_run), the rest is skipped untouched."""

from __future__ import annotations

from tasks.edit import edit_shard, plan_manifest, shards_to_run
from tests.tasks.test_edit_s3 import s3  # noqa: F401 - the moto server fixture
from tests.tasks.test_edit_tasks import noop_job


def test_broken_objects_are_redone_and_the_coordinator_agrees(s3, tmp_path):  # noqa: F811
    manifest, params = noop_job(tmp_path)
    out, key = "s3://lcd-test/runs/currency", "lcd-test/runs/currency/edits"
    plan_manifest.fn(str(manifest), out, 2)
    for i in range(2):
        assert edit_shard.fn(str(manifest), out, i, 2, str(params), None, "noop", None)["edited"] in (2, 3)
    assert shards_to_run.fn(out, 2, str(params), None, "noop", None) == []
    etag = {k: s3.info(f"{key}/i{k}.png")["ETag"] for k in range(5)}
    s3.pipe_file(f"{key}/i3.png", b"")  # shard 1: 0 bytes
    assert shards_to_run.fn(out, 2, str(params), None, "noop", None) == [1]
    s3.pipe_file(f"{key}/i0.png", s3.cat_file(f"{key}/i0.png")[:-12])  # shard 0: IEND cut off
    s3.pipe_file(f"{key}/i4.png", s3.cat_file(f"{key}/i2.png"))  # shard 1: another item's image
    assert shards_to_run.fn(out, 2, str(params), None, "noop", None) == [0, 1]
    redo = [edit_shard.fn(str(manifest), out, i, 2, str(params), None, "noop", None) for i in range(2)]
    assert [(r["edited"], r["skipped"]) for r in redo] == [(1, 1), (2, 1)]
    assert {k: s3.info(f"{key}/i{k}.png")["ETag"] for k in (1, 2)} == {k: etag[k] for k in (1, 2)}
    assert all(s3.info(f"{key}/i{k}.png")["size"] > 0 for k in range(5))
    assert shards_to_run.fn(out, 2, str(params), None, "noop", None) == []
