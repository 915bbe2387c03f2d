"""The edit tasks' bodies (`task.fn`): shard tables written per shard, merged once per item."""

import json
from pathlib import Path

import pyarrow.parquet as pq
import yaml

from tasks.edit import edit_shard, merge_shard_tables, plan_manifest

SAMPLES = Path(__file__).resolve().parents[2] / "samples"


def noop_job(tmp_path: Path) -> tuple[Path, Path]:
    """A manifest of 5 good items (i0..i4) and one bad entry, and params for the noop engine."""
    lines = [{"id": f"i{k}", "image": str(SAMPLES / "scenes/cat_00.jpg"), "mask": str(SAMPLES / "masks/cat_00.png"),
              "prompt": "a dog", "seed": k} for k in range(5)] + [{"id": "bad", "image": "x.jpg"}]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(x) for x in lines))
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"models": {"sd": "/unused/in/noop"}, "edit": {"size": 64}}))
    return manifest, params


def test_shards_then_merge_account_for_every_item_once(tmp_path):
    manifest, params = noop_job(tmp_path)
    out = tmp_path / "out"
    plan = plan_manifest.fn(str(manifest), str(out), 2)
    assert (plan["entries"], plan["items"], plan["failures"]) == (6, 5, 1)
    manifest.chmod(0)  # the shards read only their plan files, never the manifest
    manifest.rename(tmp_path / "gone.jsonl")
    counts = [edit_shard.fn(str(manifest), str(out), i, 2, str(params), None, "noop", None) for i in range(2)]
    assert counts == [{"shard": "00000-of-00002", "edited": 2, "skipped": 0, "failed": 0},
                      {"shard": "00001-of-00002", "edited": 3, "skipped": 0, "failed": 0}]
    again = edit_shard.fn(str(manifest), str(out), 1, 2, str(params), None, "noop", None)  # a retried shard
    assert again["skipped"] == 3
    merged = merge_shard_tables.fn(str(out), 2)
    assert (merged["n_missing"], merged["duplicated"], merged["failed"]) == (0, 0, 1)
    assert merged["edited"] == 2 and merged["skipped"] == 3  # the retry replaced its shard's table
    assert pq.read_table(out / "failures.parquet").column("stage").to_pylist() == ["manifest"]


def test_a_duplicate_id_is_one_failure_and_the_run_can_complete(tmp_path):
    """A manifest with an id twice: the first entry is edited, the second is one manifest failure,
    and the merge accounts for both without calling it "duplicated" (which made every run end
    "re-run to resume", forever)."""
    manifest, params = noop_job(tmp_path)
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join(lines + [lines[0]]) + "\n")
    out = tmp_path / "out"
    plan_manifest.fn(str(manifest), str(out), 1)
    edit_shard.fn(str(manifest), str(out), 0, 1, str(params), None, "noop", None)
    merged = merge_shard_tables.fn(str(out), 1)
    assert (merged["n_missing"], merged["duplicated"], merged["edited"], merged["failed"]) == (0, 0, 5, 2)
    msgs = pq.read_table(out / "failures.parquet").column("message").to_pylist()
    assert sum("duplicate id" in m for m in msgs) == 1


def test_a_second_job_on_one_out_root_is_refused_and_erases_nothing(tmp_path):
    """Job A edits 5 items into out; job B (another manifest file) on the same out used to
    replace A's plan and shard tables (results.parquet kept half of each). B is refused before it
    writes anything; A re-run resumes (all skipped); B with replan=True takes the out_root over."""
    import pytest

    from lcd.errors import LcdError

    manifest, params = noop_job(tmp_path)
    (tmp_path / "b").mkdir()
    other = tmp_path / "b" / "m.jsonl"
    other.write_text(manifest.read_text().replace('"id": "i', '"id": "j'))  # ids j0..j4, same inputs
    out = tmp_path / "out"

    def run(m, **kw):
        plan_manifest.fn(str(m), str(out), 2, **kw)
        for i in range(2):
            edit_shard.fn(str(m), str(out), i, 2, str(params), None, "noop", None)
        return merge_shard_tables.fn(str(out), 2)

    assert run(manifest)["edited"] == 5
    tables_before = {p.name: p.read_bytes() for p in (out / "tables").iterdir()}
    with pytest.raises(LcdError, match=r"holds the edit-batch job of another manifest, .*m\.jsonl \(sha256 [0-9a-f]{64}\)"):
        plan_manifest.fn(str(other), str(out), 2)
    assert {p.name: p.read_bytes() for p in (out / "tables").iterdir()} == tables_before
    again = run(manifest)
    assert (again["edited"], again["skipped"], again["n_missing"]) == (0, 5, 0)
    ids = pq.read_table(out / "results.parquet").column("id").to_pylist()
    assert sorted(ids) == [f"i{k}" for k in range(5)]  # each once
    taken = run(other, replan=True)
    assert (taken["edited"], taken["n_missing"]) == (5, 0)
    assert sorted(pq.read_table(out / "results.parquet").column("id").to_pylist()) == [f"j{k}" for k in range(5)]


def _finished_job(tmp_path: Path, shards: int = 2):
    """noop_job planned and run to the end: (manifest, params, out)."""
    manifest, params = noop_job(tmp_path)
    out = tmp_path / "out"
    plan_manifest.fn(str(manifest), str(out), shards)
    for i in range(shards):
        edit_shard.fn(str(manifest), str(out), i, shards, str(params), None, "noop", None)
    return manifest, params, out


def test_a_finished_job_has_no_shard_to_run_and_its_check_reads_no_input_byte(tmp_path, monkeypatch):
    """The coordinator's check (shards_to_run): every shard of a finished job is current, its tables
    say "skipped" for every item as a run of it would, and no input file is read (the shards'
    hashes tables stand in for the bytes, as in a fresh coordinator process)."""
    from lcd.io import hashing
    from tasks.edit import shards_to_run

    manifest, params, out = _finished_job(tmp_path)
    assert (out / "tables" / "hashes-00000-of-00002.parquet").exists()
    monkeypatch.setattr(hashing, "_HASH_CACHE", {})  # a new process: nothing hashed yet
    reads = []
    real_open = open
    monkeypatch.setattr(hashing, "open", lambda p, *a, **k: reads.append(p) or real_open(p, *a, **k), raising=False)
    assert shards_to_run.fn(str(out), 2, str(params), None, "noop", None) == []
    assert reads == []
    merged = merge_shard_tables.fn(str(out), 2)
    assert (merged["edited"], merged["skipped"], merged["n_missing"], merged["duplicated"]) == (0, 5, 0, 0)


def test_only_the_shard_whose_input_output_or_ledger_changed_is_run_again(tmp_path):
    """Shard 0 holds i0, i1; shard 1 holds i2..i4. A gone output, a shard killed mid-run (no
    ledger) and a new config each send exactly the shards they touch back to the workers."""
    from tasks.edit import shards_to_run

    manifest, params, out = _finished_job(tmp_path)
    (out / "edits" / "i3.png").unlink()  # gone: redone whatever the ledger says
    assert shards_to_run.fn(str(out), 2, str(params), None, "noop", None) == [1]
    edit_shard.fn(str(manifest), str(out), 1, 2, str(params), None, "noop", None)
    assert shards_to_run.fn(str(out), 2, str(params), None, "noop", None) == []
    (out / "tables" / "results-00000-of-00002.parquet").unlink()  # a killed run leaves no ledger
    assert shards_to_run.fn(str(out), 2, str(params), None, "noop", None) == [0]
    edit_shard.fn(str(manifest), str(out), 0, 2, str(params), None, "noop", None)
    params.write_text(yaml.safe_dump({"models": {"sd": "/unused/in/noop"}, "edit": {"size": 64, "guidance": 2.0}}))
    assert shards_to_run.fn(str(out), 2, str(params), None, "noop", None) == [0, 1]


def test_an_input_rewritten_in_place_sends_its_shard_back(tmp_path):
    """A new input file (new bytes, new mtime) under the same path: the known hash no longer
    applies, the item's hash changes, and its shard is not current."""
    import os
    import shutil

    from tasks.edit import shards_to_run

    manifest, params = noop_job(tmp_path)
    lines = [json.loads(x) for x in manifest.read_text().splitlines()]
    own = tmp_path / "own.jpg"
    shutil.copy(lines[4]["image"], own)
    lines[4]["image"] = str(own)  # i4, in shard 1
    manifest.write_text("\n".join(json.dumps(x) for x in lines))
    out = tmp_path / "out"
    plan_manifest.fn(str(manifest), str(out), 2)
    for i in range(2):
        edit_shard.fn(str(manifest), str(out), i, 2, str(params), None, "noop", None)
    assert shards_to_run.fn(str(out), 2, str(params), None, "noop", None) == []
    data = own.read_bytes()
    own.write_bytes(data[:-3] + bytes([data[-3] ^ 1]) + data[-2:])  # one byte of the entropy-coded data
    st = os.stat(own)
    os.utime(own, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000))
    assert shards_to_run.fn(str(out), 2, str(params), None, "noop", None) == [1]
