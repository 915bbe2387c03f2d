"""No orphaned Prefect server: the temporary server `python -m flows <stage>` starts (no
PREFECT_API_URL) dies with it, even on SIGKILL (flows.server: PR_SET_PDEATHSIG, then exec)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "samples"


def _gone(pids: list[int], within_s: float) -> list[int]:
    """The pids still alive (zombies count as gone) after waiting up to `within_s`."""
    deadline = time.monotonic() + within_s
    while True:
        alive = []
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


def test_a_guarded_command_dies_with_its_parent(tmp_path):
    """The mechanism alone: a parent starts `python -m flows.server <its pid> sleep 60` and is
    SIGKILLed; the sleep (exec'ed in place of the guard, so the same pid) is gone in seconds."""
    code = ("import os, subprocess, sys, time; "
            "p = subprocess.Popen([sys.executable, '-m', 'flows.server', str(os.getpid()), '/bin/sleep', '60']); "
            "print(p.pid, flush=True); time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    child = int(parent.stdout.readline())
    deadline = time.monotonic() + 20
    while psutil.Process(child).name() != "sleep" and time.monotonic() < deadline:  # the exec happened
        time.sleep(0.05)
    assert psutil.Process(child).cmdline() == ["/bin/sleep", "60"]
    parent.send_signal(signal.SIGKILL)
    parent.wait(10)
    assert _gone([child], 5) == []


@pytest.mark.slow
def test_sigkill_of_python_m_flows_edit_leaves_no_server(tmp_path):
    """`python -m flows edit` with no PREFECT_API_URL, SIGKILLed while it edits: every process it
    started (the temporary server among them) is gone within a few seconds."""
    img = SAMPLES / "masks" / "cat_00.png"
    lines = [{"id": f"i{k:04d}", "image": str(SAMPLES / "scenes" / "cat_00.jpg"), "mask": str(img),
              "prompt": "a dog", "seed": k} for k in range(3000)]
    manifest = tmp_path / "edits.jsonl"
    manifest.write_text("\n".join(json.dumps(x) for x in lines))
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"models": {"sd": "/unused/in/noop"}, "edit": {"size": 64, "batch_size": 8}}))
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PYTHONPATH=str(REPO), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    log = open(tmp_path / "flows.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "flows", "edit", "--engine", "noop", "--params", str(params),
                             "--manifest", str(manifest), "--out", str(tmp_path / "out")],
                            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    edits = tmp_path / "out" / "edit" / "edits"
    try:
        deadline = time.monotonic() + 240
        while not (edits.exists() and any(edits.iterdir())):  # mid-run: the shard is writing outputs
            assert proc.poll() is None, (tmp_path / "flows.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (tmp_path / "flows.log").read_text()[-3000:]
            time.sleep(0.2)
        children = psutil.Process(proc.pid).children(recursive=True)
        servers = [c for c in children if "prefect.server.api.server:create_app" in " ".join(c.cmdline())]
        assert len(servers) == 1, [c.cmdline() for c in children]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert _gone([c.pid for c in children], 5) == [], "left running after SIGKILL of python -m flows edit"
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    assert "Started a temporary Prefect server" in (tmp_path / "flows.log").read_text()


def test_a_server_that_does_not_come_up_is_one_line_and_left_stopped(tmp_path):
    """A temporary server that is not healthy within the wait (0.5 s here; at least 120 s by
    default, since a fresh database's migrations take longer than Prefect's 20 s on a busy
    machine) is one LcdError line, and its process is stopped, not left behind."""
    code = ("import psutil, sys\n"
            "from flows.server import temporary_server\n"
            "try:\n"
            "    with temporary_server(startup_s=0.5):\n"
            "        pass\n"
            "except Exception as e:\n"
            "    print(type(e).__name__, '|', e)\n"
            "print('children', len(psutil.Process().children(recursive=True)))\n")
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(tmp_path / "ph"), PYTHONPATH=str(REPO), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith("ServerStartError | the temporary Prefect server did not answer on http://127.0.0.1:")
    assert "within 0 s" in lines[0] or "within 1 s" in lines[0]
    assert lines[-1] == "children 0", r.stdout + r.stderr[-2000:]
