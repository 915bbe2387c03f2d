"""The temporary Prefect server of `python -m flows <stage>`, dying with the process that started it.

Why: with no PREFECT_API_URL, Prefect starts a temporary server (uvicorn, ~225 MB) as a child
process and stops it at exit (atexit). A SIGKILL of `python -m flows edit` (a user, the OOM
killer, DVC's own kill) runs no atexit: the server was left running, one more per kill. Here the
stage starts that same server itself, through `python -m flows.server <parent pid> <command>`,
which asks the kernel to SIGKILL it when its parent dies (prctl PR_SET_PDEATHSIG, Linux) and
then execs the server: nothing of it outlives the stage however the stage ends. Prefect is
pointed at it by PREFECT_API_URL, so it starts none of its own.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

from lcd.errors import LcdError

PR_SET_PDEATHSIG = 1
MIN_STARTUP_S = 120.0  # the longest the temporary server is waited for, at the least


class ServerStartError(LcdError):
    """The temporary Prefect server did not come up: one line, exit 2 (python -m flows)."""


def die_with_parent(sig: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send `sig` to this process when its parent exits; False where prctl is
    not available (not Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_command(port: int) -> list[str]:
    """The command Prefect's own SubprocessASGIServer runs (uvicorn on the server's app factory)."""
    app_dir = Path(importlib.util.find_spec("prefect").origin).parent.parent
    return [sys.executable, "-m", "uvicorn", "--app-dir", str(app_dir), "--factory",
            "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "error", "--lifespan", "on"]


def _wanted() -> bool:
    """Whether Prefect would start a temporary server: no API URL, ephemeral mode allowed."""
    from prefect.settings import get_current_settings

    s = get_current_settings()
    return not s.api.url and bool(s.server.ephemeral.enabled)


@contextlib.contextmanager
def temporary_server(startup_s: float | None = None) -> Iterator[str | None]:
    """Start the temporary server when Prefect would, as a child that dies with this process;
    -> its API URL (None when a server is configured: nothing started). Stopped at the end."""
    if not _wanted():
        yield None
        return
    from prefect.context import refresh_global_settings_context
    from prefect.settings import get_current_settings

    # Prefect's own default (20 s) is spent by a fresh database's migrations on a busy 2-core machine
    timeout = startup_s or max(get_current_settings().server.ephemeral.startup_timeout_seconds, MIN_STARTUP_S)
    env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
    proc, url = None, ""
    try:
        for _ in range(3):  # a port taken between its choice and the bind (the server exits): another one
            port = _free_port()
            url = f"http://127.0.0.1:{port}/api"
            proc = subprocess.Popen([sys.executable, "-m", "flows.server", str(os.getpid()), *_server_command(port)],
                                    env=env, cwd=os.getcwd())
            if _wait_healthy(proc, url, timeout):
                break
            exited = proc.poll() is not None
            _stop(proc)
            proc = None
            if not exited:  # alive but silent for the whole wait: another port would not help
                break
        if proc is None:
            raise ServerStartError(f"the temporary Prefect server did not answer on {url} within {timeout:.0f} s "
                                   "(set PREFECT_API_URL to a running server, or "
                                   "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS higher)")
        print(f"Started a temporary Prefect server on {url[:-4]} (pid {proc.pid}; it ends with this process)",
              file=sys.stderr)
        os.environ["PREFECT_API_URL"] = url
        refresh_global_settings_context()  # every thread's settings now name it
        yield url
    finally:
        if proc is not None:
            _drain_prefect()
            os.environ.pop("PREFECT_API_URL", None)
            refresh_global_settings_context()
            _stop(proc)


def _wait_healthy(proc: subprocess.Popen, url: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


def _drain_prefect(timeout_s: float = 10.0) -> None:
    """Send the logs and events Prefect still holds while the server is up (its own atexit
    flush would find it stopped: "Error logging to API")."""
    try:
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        for service in (APILogWorker, EventsWorker):
            service.drain_all(timeout=timeout_s, at_exit=False)
    except Exception:  # noqa: BLE001 - a flush that fails loses log lines, never the stage's result
        pass


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main(argv: list[str]) -> int:
    """`python -m flows.server <parent pid> <command...>`: exec `command` so that it dies with
    the parent (the death signal survives exec); nothing when the parent is already gone."""
    parent, command = int(argv[0]), argv[1:]
    die_with_parent()
    if os.getppid() != parent:  # it died before the signal was armed
        return 0
    os.execv(command[0], command)
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
