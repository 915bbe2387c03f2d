"""Shard plans: the manifest read once into one Parquet file per shard; JSONL and Parquet manifests
plan alike; an unchanged manifest is not re-planned; shards read only their own file."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lcd.errors import LcdError
from lcd.jobs import tables
from lcd.jobs.manifest import read_manifest
from lcd.jobs.plan import plan_ids, plan_items, read_plan, read_shard_plan, shard_plan_path, write_plan


def _entries(n: int) -> list[dict]:
    out = [{"id": f"it{k:04d}", "image": f"imgs/{k}.jpg", "select": f"box:0,0,{k + 1},{k + 1}",
            "prompt": f"a photo of a dog {k}", "seed": k} for k in range(n)]
    if n > 3:
        out[3]["concept"] = "dog"
    return out


def _jsonl(tmp: Path, entries: list, extra_lines=()) -> Path:
    p = tmp / "m.jsonl"
    p.write_text("\n".join([json.dumps(e) for e in entries] + list(extra_lines)) + "\n")
    return p


def _parquet(tmp: Path, entries: list[dict]) -> Path:
    cols = ["id", "image", "mask", "select", "concept", "prompt", "seed"]
    t = pa.table({c: [e.get(c) for e in entries] for c in cols},
                 schema=pa.schema([(c, pa.int64() if c == "seed" else pa.string()) for c in cols]))
    p = tmp / "m.parquet"
    pq.write_table(t, p, row_group_size=7)  # several row groups: read in batches
    return p


def test_jsonl_and_parquet_manifests_give_the_same_plan(tmp_path):
    entries = _entries(23)
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    pj = write_plan(_jsonl(tmp_path / "a", entries), tmp_path / "out-j", 4)
    pp = write_plan(_parquet(tmp_path / "b", entries), tmp_path / "out-p", 4)
    assert (pj.entries, pj.items, pj.failures) == (pp.entries, pp.items, pp.failures) == (23, 23, 0)
    for i in range(4):
        a = [it.model_dump() for it in read_shard_plan(tmp_path / "out-j", i, 4)]
        b = [it.model_dump() for it in read_shard_plan(tmp_path / "out-p", i, 4)]
        # same items in the same shards; only the folder the relative paths resolve against differs
        assert [x | {"image": Path(x["image"]).name} for x in a] == [x | {"image": Path(x["image"]).name} for x in b]
        assert all(Path(x["image"]).is_absolute() for x in a)
    sizes = [len(read_shard_plan(tmp_path / "out-j", i, 4)) for i in range(4)]
    assert sizes == [5, 6, 6, 6] and plan_ids(tmp_path / "out-j", 4).to_pylist() == [e["id"] for e in entries]


def test_plan_equals_the_whole_manifest_read_and_keeps_bad_entries_as_failures(tmp_path):
    entries = _entries(10)
    m = _jsonl(tmp_path, entries[:5] + [entries[2]] + entries[5:], extra_lines=["{not json", '{"id": "x"}', "\xff"])
    plan = write_plan(m, tmp_path / "out", 3)
    items, failures = read_manifest(m)
    planned = [it for i in range(3) for it in read_shard_plan(tmp_path / "out", i, 3)]
    assert planned == items and plan.items == 10 and plan.failures == len(failures) == 4
    fail = tables.read_table(tmp_path / "out" / "tables" / "failures-manifest.parquet", tables.FAILURES_SCHEMA)
    msgs = fail.column("message").to_pylist()
    assert any("duplicate id 'it0002'" in x for x in msgs) and any("not valid JSON" in x for x in msgs)
    assert set(fail.column("stage").to_pylist()) == {"manifest"}
    assert set(plan_items(tmp_path / "out", 3, ["it0003", "it0007"])) == {"it0003", "it0007"}


def test_same_manifest_is_not_replanned_and_a_changed_one_is(tmp_path):
    m = _jsonl(tmp_path, _entries(8))
    out = tmp_path / "out"
    first = write_plan(m, out, 2)
    mtime = shard_plan_path(out, 0, 2).stat().st_mtime_ns
    again = write_plan(m, out, 2)
    assert again.reused and not first.reused and shard_plan_path(out, 0, 2).stat().st_mtime_ns == mtime
    assert not write_plan(m, out, 3).reused  # another sharding is another plan
    m.write_text(m.read_text() + json.dumps(_entries(9)[8]) + "\n")
    changed = write_plan(m, out, 2)
    assert not changed.reused and changed.items == 9 and read_plan(out).num_shards == 2


def test_more_shards_than_items_gives_empty_plans(tmp_path):
    out = tmp_path / "out"
    write_plan(_jsonl(tmp_path, _entries(2)), out, 5)
    assert [len(read_shard_plan(out, i, 5)) for i in range(5)] == [0, 0, 1, 0, 1]


def test_plan_errors_name_the_value(tmp_path):
    m = _jsonl(tmp_path, _entries(2))
    for bad in (0, -1, True, 2.5):
        with pytest.raises(LcdError, match="num_shards must be an integer >= 1"):
            write_plan(m, tmp_path / "out", bad)
    with pytest.raises(LcdError, match="manifest not found"):
        write_plan(tmp_path / "nope.jsonl", tmp_path / "out", 2)
    with pytest.raises(LcdError, match="no shard plan; run the edit-batch coordinator"):
        read_shard_plan(tmp_path / "elsewhere", 0, 2)
    write_plan(m, tmp_path / "out", 2)
    with pytest.raises(LcdError, match=r"shard index must be in \[0, 2\), got 2"):
        read_shard_plan(tmp_path / "out", 2, 2)
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(LcdError, match="bad.parquet: cannot read the Parquet manifest"):
        write_plan(tmp_path / "bad.parquet", tmp_path / "out2", 2)


def test_a_plan_of_another_manifest_file_is_refused_unless_replan(tmp_path):
    """Two jobs on one out_root used to replace each other's plans and tables; now the second is
    refused naming the out_root and the first job's manifest and hash. The first job's own
    manifest, edited in place, is still re-planned (DVC's edit stage), and replan=True overrides."""
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    a, b = _jsonl(tmp_path / "a", _entries(4)), _jsonl(tmp_path / "b", _entries(6))
    out = tmp_path / "out"
    first = write_plan(a, out, 2)
    assert first.manifest == str(a.resolve()) and read_plan(out).manifest == str(a.resolve())
    before = shard_plan_path(out, 0, 2).read_bytes()
    with pytest.raises(LcdError, match=rf"out_root {out} holds the edit-batch job of another manifest, "
                                       rf"{a.resolve()} \(sha256 {first.manifest_sha256}\)") as e:
        write_plan(b, out, 2)
    assert e.value.item == str(out) and "replan=True" in str(e.value)
    assert shard_plan_path(out, 0, 2).read_bytes() == before and read_plan(out) == first  # untouched
    assert write_plan(a, out, 2).reused  # the same job resumes
    a.write_text(b.read_text())  # the job's manifest edited in place: re-planned, under any spelling
    assert write_plan(tmp_path / "a" / ".." / "a" / "m.jsonl", out, 2).items == 6
    replanned = write_plan(_jsonl(tmp_path / "b", _entries(3)), out, 2, replan=True)
    assert not replanned.reused and replanned.items == 3 and read_plan(out).manifest == str(b.resolve())


def test_a_plan_written_before_locations_were_kept_records_it_when_reused(tmp_path):
    m, out = _jsonl(tmp_path, _entries(4)), tmp_path / "out"
    write_plan(m, out, 2)
    pj = out / "plan" / "plan.json"
    pj.write_text(json.dumps({k: v for k, v in json.loads(pj.read_text()).items() if k != "manifest"}))
    assert read_plan(out).manifest == ""
    assert write_plan(m, out, 2).reused and read_plan(out).manifest == str(m.resolve())


def test_a_byte_identical_copy_elsewhere_is_replanned_against_its_own_folder(tmp_path):
    """Relative image paths resolve against the manifest's folder, so the same bytes at another
    location name other files: the plan is written again, not reused with the old paths."""
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    a = _jsonl(tmp_path / "a", _entries(4))
    b = tmp_path / "b" / "m.jsonl"
    b.write_bytes(a.read_bytes())
    out = tmp_path / "out"
    write_plan(a, out, 1)
    assert read_shard_plan(out, 0, 1)[0].image == str((tmp_path / "a" / "imgs" / "0.jpg").resolve())
    copy = write_plan(b, out, 1)
    assert not copy.reused and read_plan(out).manifest == str(b.resolve())
    assert read_shard_plan(out, 0, 1)[0].image == str((tmp_path / "b" / "imgs" / "0.jpg").resolve())
    assert write_plan(b, out, 1).reused
