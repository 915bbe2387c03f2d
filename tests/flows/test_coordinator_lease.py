"""edit-batch's coordinator takes the out_root's lease (lcd.jobs.lease): `python -m flows edit`
on an out_root another coordinator holds refuses in one line naming that run, exit 2, and
writes nothing; once the holder is gone (its pid dead) the lease is taken over and the job runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lcd.jobs.lease import CoordinatorLease, lease_path

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "samples"
pytestmark = pytest.mark.slow


def _flows_edit(tmp_path: Path, out: Path) -> subprocess.CompletedProcess:
    lines = [{"id": f"i{k}", "image": str(SAMPLES / "scenes" / "cat_00.jpg"), "mask": str(SAMPLES / "masks" / "cat_00.png"),
              "prompt": "a dog", "seed": k} for k in range(3)]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"models": {"sd": "/unused"}, "edit": {"size": 64}}))
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(tmp_path / "ph"), PYTHONPATH=str(REPO), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    return subprocess.run([sys.executable, "-m", "flows", "edit", "--engine", "noop", "--params", "params.yaml",
                           "--manifest", "m.jsonl", "--out", str(out)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)


def test_flows_edit_refuses_a_held_out_root_then_takes_a_dead_holders_lease(tmp_path):
    out = tmp_path / "out"
    holder = CoordinatorLease(out / "edit", "nightly-run-7 (1234)").acquire()
    try:
        r = _flows_edit(tmp_path, out)
    finally:
        holder.release()
    assert r.returncode == 2, r.stderr[-3000:]
    (line,) = [ln for ln in r.stderr.splitlines() if ln.startswith("python -m flows edit: error:")]
    assert f"held by coordinator 'nightly-run-7 (1234)' (host " in line and f"pid {os.getpid()}," in line
    assert "Traceback" not in r.stderr and not (out / "edit" / "edits").exists()
    # a holder killed without giving the lease back: its pid is dead, the next run takes over
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lease_path(out / "edit").write_text(json.dumps({**holder.info, "pid": dead.pid, "pid_start": None}))
    r = _flows_edit(tmp_path, out)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "'edited': 3" in r.stdout and "took over the stale coordinator lease of 'nightly-run-7 (1234)'" in r.stderr
    assert not lease_path(out / "edit").exists()
