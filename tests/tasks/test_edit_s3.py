"""edit-batch with `out_root` on object storage: a real S3-compatible server on 127.0.0.1.

The server is moto's `ThreadedMotoServer` (moto[server]), what s3fs and dvc-s3 test with: a
pip package that starts in-process in well under a second, needs no binary download and speaks
the S3 REST API that s3fs/botocore use (SeaweedFS' `weed mini` would be a second, much larger
binary for the same API surface here). Credentials and endpoint come from the environment only.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.s3_lookup import list_request_log
from lcd.io import storage
from lcd.jobs import tables
from tasks.edit import edit_shard, merge_shard_tables, plan_manifest
from tests.tasks.test_edit_tasks import noop_job


@pytest.fixture
def s3(monkeypatch):
    from moto.server import ThreadedMotoServer

    srv = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    srv.start()
    host, port = srv.get_host_and_port()
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://{host}:{port}"}.items():
        monkeypatch.setenv(k, v)
    import fsspec

    fsspec.filesystem("s3").clear_instance_cache()  # a fresh client for this server's endpoint
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.makedirs("lcd-test", exist_ok=True)  # moto keeps its buckets per process, across servers
    yield fs
    fsspec.filesystem("s3").clear_instance_cache()
    srv.stop()


def test_outputs_and_tables_round_trip_on_s3(s3, tmp_path):
    manifest, params = noop_job(tmp_path)
    out = "s3://lcd-test/runs/night-1"
    assert plan_manifest.fn(str(manifest), out, 2)["items"] == 5
    counts = [edit_shard.fn(str(manifest), out, i, 2, str(params), None, "noop", None) for i in range(2)]
    assert [c["edited"] for c in counts] == [2, 3]
    merged = merge_shard_tables.fn(out, 2)
    assert (merged["edited"], merged["failed"], merged["n_missing"], merged["duplicated"]) == (5, 1, 0, 0)
    # everything is in the bucket, nothing on local disk under a mangled name
    keys = set(s3.find("lcd-test/runs/night-1"))
    for k in range(5):
        assert f"lcd-test/runs/night-1/edits/i{k}.png" in keys and f"lcd-test/runs/night-1/regions/i{k}.png" in keys
    assert {"lcd-test/runs/night-1/results.parquet", "lcd-test/runs/night-1/plan/plan.json",
            "lcd-test/runs/night-1/tables/results-00000-of-00002.parquet"} <= keys
    assert not any(".tmp" in k for k in keys) and not Path("s3:").exists()
    res = tables.read_table(storage.join(out, "results.parquet"), tables.RESULTS_SCHEMA)
    assert sorted(res.column("id").to_pylist()) == [f"i{k}" for k in range(5)]
    assert all(o.startswith("s3://lcd-test/runs/night-1/edits/") for o in res.column("output").to_pylist())
    # resume: the ledger + one listing say all is current; an object that is gone is redone
    s3.rm_file("lcd-test/runs/night-1/edits/i3.png")
    again = edit_shard.fn(str(manifest), out, 1, 2, str(params), None, "noop", None)
    assert (again["edited"], again["skipped"]) == (1, 2)
    assert s3.exists("lcd-test/runs/night-1/edits/i3.png")
    from lcd.io.images import read_png_meta

    assert read_png_meta(storage.join(out, "edits", "i3.png"))["id"] == "i3"


def test_manifest_images_and_masks_on_s3_plan_edit_and_resume(s3, tmp_path):
    """Inputs on object storage too: a Parquet manifest in the bucket whose relative image/mask
    paths resolve against the manifest's own prefix, edited into an S3 out_root; the item hashes
    come from the objects' bytes, so a re-run skips everything and a changed mask redoes its item."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.tasks.test_edit_tasks import SAMPLES

    for name in ("scenes/cat_00.jpg", "masks/cat_00.png", "masks/teapot_00.png"):
        s3.put_file(str(SAMPLES / name), f"lcd-test/in/{name}")
    rows = [{"id": f"r{k}", "image": "scenes/cat_00.jpg", "mask": "masks/cat_00.png", "prompt": "a dog", "seed": k}
            for k in range(3)] + [{"id": "gone", "image": "scenes/nope.jpg", "mask": "masks/cat_00.png", "prompt": "a dog"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "m.parquet")
    s3.put_file(str(tmp_path / "m.parquet"), "lcd-test/in/m.parquet")
    _, params = noop_job(tmp_path)
    manifest, out = "s3://lcd-test/in/m.parquet", "s3://lcd-test/runs/remote-in"
    assert plan_manifest.fn(manifest, out, 1)["items"] == 4
    first = edit_shard.fn(manifest, out, 0, 1, str(params), None, "noop", None)
    assert (first["edited"], first["failed"]) == (3, 1)
    fails = tables.read_table(storage.join(out, "tables", "failures-00000-of-00001.parquet")).to_pylist()
    assert fails[0]["id"] == "gone" and "s3://lcd-test/in/scenes/nope.jpg: file not found" in fails[0]["message"]
    assert edit_shard.fn(manifest, out, 0, 1, str(params), None, "noop", None)["skipped"] == 3
    s3.put_file(str(SAMPLES / "masks/teapot_00.png"), "lcd-test/in/masks/cat_00.png")  # new bytes, same name
    again = edit_shard.fn(manifest, out, 0, 1, str(params), None, "noop", None)
    assert (again["edited"], again["skipped"]) == (3, 0)


def test_a_shard_lists_only_under_its_own_ids_prefixes_on_s3(s3):
    """A shard's look at its outputs on object storage costs what the shard holds, not what the
    job holds: its ids' common prefixes are listed (one LIST page here), not the whole edits/
    folder (two pages of 1,000 for 1,100 outputs). Counted from the requests the S3 client sends."""
    s3.pipe({f"lcd-test/big/edits/item{i:06d}.png": b"x" for i in range(1100)})
    s3.rm_file("lcd-test/big/edits/item000150.png")
    folder = "s3://lcd-test/big/edits"
    prefixes = list_request_log(folder)
    names = [f"item{i:06d}.png" for i in range(100, 200)]
    assert storage.present_names(folder, names) == set(names) - {"item000150.png"}
    assert prefixes == ["big/edits/item0001"]
    prefixes.clear()
    assert len(storage.list_names(folder)) == 1099 and len(prefixes) == 2  # what a whole listing costs
    prefixes.clear()
    # ids that share little: a few narrow listings, the same answer; no name at all asks nothing
    assert storage.present_names(folder, ["item000001.png", "zzz.png", "item001099.png"]) == {"item000001.png",
                                                                                            "item001099.png"}
    assert sorted(prefixes) == ["big/edits/item000001.png", "big/edits/item001099.png", "big/edits/zzz.png"]
    prefixes.clear()
    assert storage.present_names(folder, []) == set() and prefixes == []
