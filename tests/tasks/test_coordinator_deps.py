"""The coordinator's check of current shards (shards_to_run) needs no inputs: it reads only what
the shards recorded under out_root (ledger, deps table, plan) and object metadata, so it can run
on a machine that holds none of the images, masks, concepts or weights (issue 30)."""

from __future__ import annotations

import json
import shutil

import pytest

from lcd.io import storage
from lcd.jobs import tables
from tasks.edit import edit_shard, plan_manifest, shards_to_run
from tests.tasks.test_edit_s3 import s3  # noqa: F401 - the moto server fixture
from tests.tasks.test_edit_tasks import SAMPLES, noop_job


def _reads(monkeypatch) -> list[str]:
    """Every path or URL whose bytes are opened through lcd.io.storage or lcd.io.hashing."""
    from lcd.io import hashing

    seen: list[str] = []
    for name in ("open_read", "read_bytes", "iter_bytes"):
        real = getattr(storage, name)
        monkeypatch.setattr(storage, name, lambda p, *a, _real=real, **k: seen.append(str(p)) or _real(p, *a, **k))
    real_open = open
    monkeypatch.setattr(hashing, "open", lambda p, *a, **k: seen.append(str(p)) or real_open(p, *a, **k), raising=False)
    return seen


def test_inputs_in_the_bucket_the_check_opens_nothing_but_out_root(s3, tmp_path, monkeypatch):  # noqa: F811
    """Manifest, images and masks as objects; a finished job: the check says every shard is
    current and every byte it read lies under out_root (its tables and plan); an input object
    with new bytes sends exactly its shard back, found from its ETag alone."""
    for name in ("scenes/cat_00.jpg", "scenes/teapot_00.jpg", "masks/cat_00.png"):
        s3.put_file(str(SAMPLES / name), f"lcd-test/in/{name}")
    rows = [{"id": f"r{k}", "image": "scenes/cat_00.jpg" if k < 2 else "scenes/teapot_00.jpg",
             "mask": "masks/cat_00.png", "prompt": "a dog", "seed": k} for k in range(4)]
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "m.parquet")
    s3.put_file(str(tmp_path / "m.parquet"), "lcd-test/in/m.parquet")
    _, params = noop_job(tmp_path)
    manifest, out = "s3://lcd-test/in/m.parquet", "s3://lcd-test/runs/nodeps"
    plan_manifest.fn(manifest, out, 2)
    for i in range(2):
        assert edit_shard.fn(manifest, out, i, 2, str(params), None, "noop", None)["edited"] == 2
    assert storage.exists(storage.join(out, "tables", "deps-00000-of-00002.parquet"))
    seen = _reads(monkeypatch)
    assert shards_to_run.fn(out, 2, str(params), None, "noop", None) == []
    assert seen and all(p.startswith(out + "/") for p in seen), seen
    seen.clear()
    s3.put_file(str(SAMPLES / "scenes/backpack_00.jpg"), "lcd-test/in/scenes/teapot_00.jpg")  # r2, r3: shard 1
    assert shards_to_run.fn(out, 2, str(params), None, "noop", None) == [1]
    assert all(p.startswith(out + "/") for p in seen), seen


def _concept(folder):
    folder.mkdir(parents=True)
    (folder / "concept.safetensors").write_bytes(b"weights stand-in: the noop engine never loads them")
    return folder


def test_a_dep_this_machine_lacks_or_that_changed_sends_its_shard_back(tmp_path):
    """A concept folder the coordinator's machine does not have reads "absent", not current: that
    shard runs and decides for itself (never a path of another machine trusted); put back, the
    shard is current again; a file changed in it, or a changed setting, sends the shard back."""
    manifest, params = noop_job(tmp_path)
    lines = [json.loads(x) for x in manifest.read_text().splitlines()]
    for x in lines[2:5]:
        x["concept"] = "dog"  # i2..i4: shard 1
    manifest.write_text("\n".join(json.dumps(x) for x in lines))
    concepts, out = tmp_path / "concepts", tmp_path / "out"
    _concept(concepts / "dog")
    plan_manifest.fn(str(manifest), str(out), 2)
    for i in range(2):
        edit_shard.fn(str(manifest), str(out), i, 2, str(params), None, "noop", str(concepts))
    check = lambda root=str(concepts): shards_to_run.fn(str(out), 2, str(params), None, "noop", root)  # noqa: E731
    assert check() == []
    shutil.move(concepts, tmp_path / "elsewhere")  # the coordinator's machine has no such folder
    assert check() == [1]
    shutil.move(tmp_path / "elsewhere", concepts)
    assert check() == []
    assert check(str(tmp_path / "other-root")) == [1]  # another concepts root is another setting
    (concepts / "dog" / "concept.safetensors").write_bytes(b"retrained")
    assert check() == [1]
    deps = tables.read_rows(tables.shard_table_path(out, "deps", "00001-of-00002"), tables.DEPS_SCHEMA)
    assert {r["kind"] for r in deps} == {"settings", "file", "tree"}
    assert str(concepts / "dog") in {r["ref"] for r in deps}


def test_a_shard_without_a_deps_table_is_not_trusted(tmp_path):
    """Tables from before deps were recorded (or a foreign deps table): the shard runs once, which
    writes its deps table; then the check trusts it."""
    manifest, params = noop_job(tmp_path)
    out = tmp_path / "out"
    plan_manifest.fn(str(manifest), str(out), 1)
    edit_shard.fn(str(manifest), str(out), 0, 1, str(params), None, "noop", None)
    deps = tables.shard_table_path(out, "deps", "00000-of-00001")
    deps.unlink()
    assert shards_to_run.fn(str(out), 1, str(params), None, "noop", None) == [0]
    deps.write_bytes(b"not parquet")
    assert shards_to_run.fn(str(out), 1, str(params), None, "noop", None) == [0]
    assert edit_shard.fn(str(manifest), str(out), 0, 1, str(params), None, "noop", None)["skipped"] == 5
    assert shards_to_run.fn(str(out), 1, str(params), None, "noop", None) == []


@pytest.mark.parametrize("field,value", [("prompt", "a cat"), ("seed", 99)])
def test_an_edited_plan_item_is_not_current(tmp_path, field, value):
    """The plan's fields enter the input hash; the check compares them with the ledger's row."""
    manifest, params = noop_job(tmp_path)
    out = tmp_path / "out"
    plan_manifest.fn(str(manifest), str(out), 1)
    edit_shard.fn(str(manifest), str(out), 0, 1, str(params), None, "noop", None)
    lines = [json.loads(x) for x in manifest.read_text().splitlines()]
    lines[1][field] = value
    manifest.write_text("\n".join(json.dumps(x) for x in lines))
    plan_manifest.fn(str(manifest), str(out), 1)  # the job's manifest edited: re-planned
    assert shards_to_run.fn(str(out), 1, str(params), None, "noop", None) == [0]
