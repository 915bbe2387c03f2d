"""edit-batch/default through a real server and process worker: fan-out to shard runs, tables,
failures, artifacts; and a worker killed mid-batch, then a re-run: nothing lost, nothing twice."""

from __future__ import annotations

import re
import time
from pathlib import Path

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
    started = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(time.time() - 1))
    res = _run(prefect_server, manifest, out, params, "-p", "num_shards=2")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    # `--watch` ends on a state that says items failed; the run's logs hold the summary line, and
    # each shard run's logs lcd's progress lines for its edits
    watched = res.stdout + res.stderr
    assert "finished successfully in 'Completed with 2 of 5 failed'" in watched, watched[-3000:]
    runs = _api(prefect_server, "flow_runs/filter", {"flow_runs": {"start_time": {"after_": started}}})
    logs = {r["id"]: " | ".join(x["message"] for x in _api(prefect_server, "logs/filter", {
        "logs": {"flow_run_id": {"any_": [r["id"]]}}, "limit": 200})) for r in runs if r["state_type"] == "COMPLETED"}
    (coordinator,) = [m for m in logs.values() if "summary: 3 edited, 0 current (skipped), 2 failed of 5" in m]
    assert "failures in" in coordinator
    shard_logs = " | ".join(logs.values())
    assert re.search(r"edit shard 00000-of-00002: done, \d items in", shard_logs), shard_logs[-2000:]
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
    # a resume: shard 0 (item000, item001) is current and gets no run; shard 1 holds the missing
    # input's failure, so it runs again (its item002 is skipped there)
    again = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(time.time() - 1))
    res = _run(prefect_server, manifest, out, params, "-p", "num_shards=2")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    names = [r["name"] for r in _api(prefect_server, "flow_runs/filter",
                                     {"flow_runs": {"start_time": {"after_": again}}})]
    assert sorted(n for n in names if n.startswith("shard-")) == ["shard-00001-of-00002"], names
    results = pq.read_table(out / "results.parquet").to_pylist()
    assert sorted((r["id"], r["status"]) for r in results) == [("item000", "skipped"), ("item001", "skipped"),
                                                               ("item002", "skipped")]


def _api(pe, path: str, body: dict | None = None):
    import json
    import urllib.request

    req = urllib.request.Request(f"{pe.env['PREFECT_API_URL']}/{path}", method="POST" if body is not None else "GET",
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


def _flow_run_of(pe, proc) -> dict | None:
    """The flow run a worker's child process is executing (from its PREFECT__FLOW_RUN_ID), or None."""
    import psutil

    for child in psutil.Process(proc.pid).children(recursive=True):
        try:
            run_id = child.environ().get("PREFECT__FLOW_RUN_ID")
        except psutil.Error:
            continue
        if run_id:
            return _api(pe, f"flow_runs/{run_id}")
    return None


def test_worker_sigkilled_mid_shard_its_shard_is_rescheduled_and_nothing_is_lost_or_rewritten(
        prefect_server, edit_job, tmp_path):
    """Two workers, two shards: the machine running shard s dies (worker and flow-run process
    SIGKILLed). Its run goes silent, the zombie automation marks it Crashed after
    `shard_silent_after_s`, the coordinator starts the shard again on the surviving worker, and
    the job completes with every item exactly once and no finished output rewritten."""
    import subprocess
    import sys

    params, make_manifest = edit_job
    params.write_text(params.read_text().replace("batch_size: 2", "batch_size: 1").replace("steps: 2", "steps: 8"))
    n = 24
    manifest, out = make_manifest(n, bad=False), tmp_path / "out"
    workers = [prefect_server.start_worker(tmp_path / f"w{k}.log") for k in range(2)]
    code = ("import sys, json; from flows.edit_batch import edit_batch; "
            "print(json.dumps(edit_batch(sys.argv[1], sys.argv[2], sys.argv[3], num_shards=2, "
            "shard_heartbeat_s=30, shard_silent_after_s=45)))")
    coord = subprocess.Popen([sys.executable, "-c", code, str(manifest), str(out), str(params)],
                             env=prefect_server.env, cwd=Path(__file__).resolve().parents[2],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        victim, run = None, None
        deadline = time.time() + 300
        while victim is None:  # wait until one worker's shard has finished 3 of its items
            assert time.time() < deadline and coord.poll() is None, coord.stdout.read()[-3000:] if coord.poll() else "timeout"
            for w in workers:
                run = _flow_run_of(prefect_server, w)
                if run and run["name"].startswith("shard-"):
                    s = int(run["name"].split("-")[1])
                    ids = [f"item{i:03d}" for i in range(s * n // 2, (s + 1) * n // 2)]
                    if sum((out / "edits" / f"{i}.png").exists() for i in ids) >= 3:
                        victim = w
                        break
            time.sleep(0.05)
        prefect_server.kill_tree(victim)  # the machine dies: worker and its flow-run process, no cleanup
        first = {p.stem: p.stat().st_mtime_ns for p in (out / "edits").glob("*.png") if p.stem in ids}
        assert 3 <= len(first) < len(ids), f"the kill came too late to test resuming ({len(first)} of {len(ids)})"
        log, _ = coord.communicate(timeout=400)
    finally:
        for w in workers:
            if w is not victim:
                prefect_server.stop_worker(w)
        if coord.poll() is None:
            coord.kill()
    assert coord.returncode == 0, log[-4000:]
    assert "crashed" in log and "starting it again (try 2 of 3)" in log, log[-3000:]
    rows = pq.read_table(out / "results.parquet").to_pylist()
    ids_all = [r["id"] for r in rows]
    assert sorted(ids_all) == [f"item{i:03d}" for i in range(n)]  # none lost, none twice
    assert {r["id"] for r in rows if r["status"] == "skipped"} >= set(first)  # the dead run's work was kept
    assert all((out / "edits" / f"{k}.png").stat().st_mtime_ns == v for k, v in first.items())  # not rewritten
    # the killed run's marker was found by its retry and removed with its tables; no temp is left
    assert not list((out / "tables").glob("running-*")), sorted(p.name for p in (out / "tables").iterdir())
    assert not [p.name for f in ("edits", "regions") for p in (out / f).iterdir() if p.name.endswith(".tmp")]
    history = [h["type"] for h in _api(prefect_server, f"flow_run_states/?flow_run_id={run['id']}")]
    assert history[-1] == "CRASHED", history  # the dead run stayed dead: nothing finished it behind our back
    states = {r["name"]: r["state_type"] for r in _api(prefect_server, "flow_runs/filter", {"limit": 50})}
    assert states[f"shard-{s:05d}-of-00002-try-2"] == "COMPLETED", states


def test_nightly_deployment_has_the_0200_schedule(prefect_server):
    out = prefect_server.cli("deployment", "inspect", "nightly-concepts/nightly").stdout
    assert "0 2 * * *" in out and "'active': True" in out.replace('"', "'")


def test_a_model_folder_naming_its_own_code_runs_none_through_the_deployment(prefect_server, edit_job, tmp_path,
                                                                             tiny_dir):
    """edit-batch/default on a process worker whose import path holds a model folder that names
    its own module as the UNet's library (`evilsd.unet.payload`): the payload never runs, and
    every item is a failure row naming model_index.json and 'unet' (lcd.models.trust)."""
    import json
    import os
    import shutil

    params, make_manifest = edit_job
    evil = tmp_path / "evilsd"
    shutil.copytree(tiny_dir / "sd", evil)
    index = json.loads((evil / "model_index.json").read_text())
    index["unet"] = ["evilsd.unet.payload", "UNet2DConditionModel"]
    (evil / "model_index.json").write_text(json.dumps(index))
    marker = tmp_path / "PWNED"
    (evil / "unet" / "payload.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    params.write_text(params.read_text().replace(str(tiny_dir / "sd"), str(evil)))
    manifest, out = make_manifest(2, bad=False), tmp_path / "out"
    env = {**prefect_server.env, "PYTHONPATH": os.pathsep.join([str(tmp_path), prefect_server.env.get("PYTHONPATH", "")])}
    worker = prefect_server.start_worker(tmp_path / "worker.log", env)
    try:
        res = _run(prefect_server, manifest, out, params)
    finally:
        prefect_server.stop_worker(worker)
    watched = res.stdout + res.stderr
    assert not marker.exists(), "the model folder's code ran in the deployment"
    assert "Completed with 2 of 2 failed" in watched, watched[-3000:]
    failures = pq.read_table(out / "failures.parquet").to_pylist()
    assert sorted(f["id"] for f in failures) == ["item000", "item001"]
    for f in failures:
        assert "model_index.json: component 'unet' names library 'evilsd.unet.payload'" in f["message"], f
        assert "refusing to import code from a model folder" in f["message"] and "\n" not in f["message"]

