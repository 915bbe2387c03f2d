"""A real Prefect server on 127.0.0.1 (own SQLite in a temp PREFECT_HOME) and process workers on
the `gpu` pool, shared by the flow tests of the session. Everything goes through the `prefect`
CLI in subprocesses, as a user would run it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "samples"

PREFECT = [sys.executable, "-m", "prefect"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_tree(proc: subprocess.Popen, sig=signal.SIGKILL) -> None:
    """Signal a process and all its descendants (a worker and the flow runs it started), then
    wait until every one of them is gone. Each process group met is signalled too: Prefect starts
    flow-run processes in their own session, and a child spawned while the tree is walked would
    otherwise be missed."""
    try:
        root = psutil.Process(proc.pid)
        procs = root.children(recursive=True) + [root]
    except psutil.NoSuchProcess:
        return
    groups = set()
    for p in procs:
        try:
            groups.add(os.getpgid(p.pid))
        except ProcessLookupError:
            pass
    for p in procs:
        try:
            p.send_signal(sig)
        except psutil.NoSuchProcess:
            pass
    for g in groups - {os.getpgid(0)}:  # never our own group
        try:
            os.killpg(g, sig)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)
    _, alive = psutil.wait_procs(procs, timeout=30)
    assert not alive, f"still alive after {sig!r}: {alive}"


class PrefectEnv:
    """The server's environment and helpers to run the CLI and workers against it."""

    def __init__(self, env: dict[str, str], home: Path):
        self.env, self.home = env, home

    def cli(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        out = subprocess.run([*PREFECT, *args], env=self.env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
        if check and out.returncode != 0:
            raise AssertionError(f"prefect {' '.join(args)} -> {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
        return out

    def start_worker(self, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
        """A process worker on `gpu`; `env` replaces the server's environment (e.g. another import path)."""
        f = open(log, "a")
        return subprocess.Popen([*PREFECT, "worker", "start", "--pool", "gpu", "--type", "process"], env=env or self.env,
                                cwd=REPO, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)

    kill_tree = staticmethod(kill_tree)

    @staticmethod
    def stop_worker(proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                kill_tree(proc)


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """Server up, `gpu` pool created, prefect.yaml deployed; stopped (after its workers) at the end."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = _free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_WORKER_QUERY_SECONDS": "1",
           "PREFECT_WORKER_PREFETCH_SECONDS": "1", "PREFECT_LOGGING_LEVEL": "INFO", "COLUMNS": "250"}
    log = open(home / "server.log", "w")
    server = subprocess.Popen([*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env={k: v for k, v in env.items() if k != "PREFECT_API_URL"}, cwd=home,
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"prefect server did not start:\n{(home / 'server.log').read_text()[-3000:]}")
                time.sleep(0.5)
        pe = PrefectEnv(env, home)
        pe.cli("work-pool", "create", "gpu", "--type", "process")
        pe.cli("--no-prompt", "deploy", "--all")
        yield pe
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            kill_tree(server)


@pytest.fixture
def worker(prefect_server, tmp_path):
    """A process worker on `gpu` for one test, stopped before the server."""
    proc = prefect_server.start_worker(tmp_path / "worker.log")
    yield proc
    prefect_server.stop_worker(proc)


@pytest.fixture
def edit_job(tmp_path, tiny_dir):
    """A params.yaml for the tiny SD at 64 px / 2 steps, and a writer of manifests of the samples."""
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"models": {"sd": str(tiny_dir / "sd")},
                                      "edit": {"steps": 2, "size": 64, "batch_size": 2}}))

    def manifest(n_good: int, bad: bool = True) -> Path:
        import json

        scenes = ["cat_00", "backpack_00", "teapot_00"]
        lines = [{"id": f"item{i:03d}", "image": str(SAMPLES / "scenes" / f"{scenes[i % 3]}.jpg"),
                  "mask": str(SAMPLES / "masks" / f"{scenes[i % 3]}.png"), "prompt": "a photo of a dog", "seed": i}
                 for i in range(n_good)]
        if bad:
            lines.append({"id": "missing", "image": str(tmp_path / "nope.jpg"),
                          "mask": str(SAMPLES / "masks" / "cat_00.png"), "prompt": "a dog"})
            lines.append({"id": "noprompt", "image": str(SAMPLES / "scenes" / "cat_00.jpg"), "select": "box:0,0,8,8"})
        p = tmp_path / "manifest.jsonl"
        p.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
        return p

    return params, manifest
