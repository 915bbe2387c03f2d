"""edit-batch/default through a real server and process worker: fan-out to shard runs, tables,
failures, artifacts; and a worker killed mid-batch, then a re-run: nothing lost, nothing twice."""

from __future__ import annotations

import time

import pyarrow.parquet as pq
import pytest

pytestmark = [pytest.mark.server, pytest.mark.slow]


def _run(pe, manifest, out, params, *extra, watch=True):
    args = ["deployment", "run", "edit-batch/default", "-p", f"manifest={manifest}", "-p", f"out_root={out}",
            "-p", f"params_path={params}", *extra]
    return pe.cli(*args, *(["--watch", "--watch-interval", "1"] if watch else []), check=False)


def test_edit_batch_deployment_writes_outputs_and_failures(prefect_server, worker, edit_job, tmp_path):
    params, make_manifest = edit_job
    manifest, out = make_manifest(3), tmp_path / "out"
    res = _run(prefect_server, manifest, out, params, "-p", "num_shards=2")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    results = pq.read_table(out / "results.parquet").to_pylist()
    failures = {r["id"]: r for r in pq.read_table(out / "failures.parquet").to_pylist()}
    assert sorted(r["id"] for r in results) == ["item000", "item001", "item002"]
    assert {r["status"] for r in results} == {"edited"}
    assert {r["shard"] for r in results} == {"00000-of-00002", "00001-of-00002"}  # two shard runs did the work
    assert set(failures) == {"missing", "noprompt"}
    assert failures["missing"]["stage"] == "input" and "file not found" in failures["missing"]["message"]
    assert failures["noprompt"]["stage"] == "manifest" and "prompt" in failures["noprompt"]["message"]
    assert sorted(p.stem for p in (out / "edits").glob("*.png")) == ["item000", "item001", "item002"]
    assert (out / "contact_sheet.png").stat().st_size > 0
    summary = prefect_server.cli("artifact", "inspect", "edit-batch-summary").stdout
    assert "edited" in summary and "00001-of-00002" in summary
    sheet = prefect_server.cli("artifact", "inspect", "edit-batch-contact-sheet").stdout
    assert "data:image/png;base64," in sheet


def test_worker_killed_mid_batch_then_rerun_loses_and_duplicates_nothing(prefect_server, edit_job, tmp_path):
    params, make_manifest = edit_job
    params.write_text(params.read_text().replace("batch_size: 2", "batch_size: 1").replace("steps: 2", "steps: 8"))
    n = 16
    manifest, out = make_manifest(n, bad=False), tmp_path / "out"
    w1 = prefect_server.start_worker(tmp_path / "w1.log")
    try:
        _run(prefect_server, manifest, out, params, "-p", "fan_out=inline", "-p", "num_shards=1", watch=False)
        deadline = time.time() + 240
        while len(list((out / "edits").glob("*.png"))) < 3:
            assert time.time() < deadline, (tmp_path / "w1.log").read_text()[-3000:]
            time.sleep(0.05)
    finally:
        prefect_server.kill_tree(w1)  # the machine dies: worker and its flow-run process, no cleanup
    first = {p.stem: p.stat().st_mtime_ns for p in (out / "edits").glob("*.png")}
    assert 3 <= len(first) < n, f"the kill came too late to test resuming ({len(first)} of {n} done)"
    w2 = prefect_server.start_worker(tmp_path / "w2.log")
    try:
        res = _run(prefect_server, manifest, out, params, "-p", "fan_out=inline", "-p", "num_shards=1")
    finally:
        prefect_server.stop_worker(w2)
    assert res.returncode == 0, res.stdout[-3000:] + (tmp_path / "w2.log").read_text()[-3000:]
    rows = pq.read_table(out / "results.parquet").to_pylist()
    ids = [r["id"] for r in rows]
    assert sorted(ids) == [f"item{i:03d}" for i in range(n)]  # none lost, none twice
    assert {r["id"] for r in rows if r["status"] == "skipped"} == set(first)  # finished work was not redone
    assert all((out / "edits" / f"{k}.png").stat().st_mtime_ns == v for k, v in first.items())
    assert sorted(p.stem for p in (out / "edits").glob("*.png")) == sorted(ids)


def test_nightly_deployment_has_the_0200_schedule(prefect_server):
    out = prefect_server.cli("deployment", "inspect", "nightly-concepts/nightly").stdout
    assert "0 2 * * *" in out and "'active': True" in out.replace('"', "'")
