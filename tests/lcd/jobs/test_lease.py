"""One coordinator per out_root (lcd.jobs.lease): an exclusive lease with a heartbeat; a second
coordinator waits for it or refuses naming the first; a stale one (dead pid, silent heartbeat)
is taken over; two coordinators started together edit every item once in total."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from lcd.errors import CoordinatorBusy
from lcd.jobs.lease import CoordinatorLease, lease_path


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _plant(out, **fields):
    doc = {"run": "old-run", "host": socket.gethostname(), "pid": os.getpid(), "pid_start": None,
           "started": "2026-01-01T00:00:00+00:00", "heartbeat": time.time(), "token": "t0", **fields}
    path = lease_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def test_the_lease_names_its_holder_and_is_given_back(tmp_path):
    with CoordinatorLease(tmp_path, "run-a", heartbeat_s=0.2) as lease:
        doc = json.loads(lease_path(tmp_path).read_text())
        assert doc["run"] == "run-a" and doc["pid"] == os.getpid() and doc["host"] == socket.gethostname()
        assert {"started", "heartbeat", "token"} <= set(doc)
        first = doc["heartbeat"]
        time.sleep(0.7)
        assert json.loads(lease_path(tmp_path).read_text())["heartbeat"] > first  # the thread beats
        assert not lease.lost
    assert not lease_path(tmp_path).exists()


def test_a_second_coordinator_refuses_naming_the_first_or_waits_for_it(tmp_path):
    a = CoordinatorLease(tmp_path, "flow-run-apricot").acquire()
    t0 = time.monotonic()
    with pytest.raises(CoordinatorBusy, match=rf"held by coordinator 'flow-run-apricot' \(host .*, pid {os.getpid()}, "
                                              r"since .*\); waited 0 s"):
        CoordinatorLease(tmp_path, "flow-run-banana").acquire()
    with pytest.raises(CoordinatorBusy, match="waited 1 s"):
        CoordinatorLease(tmp_path, "flow-run-banana", wait_s=0.6, poll_s=0.1).acquire()
    assert 0.5 < time.monotonic() - t0 < 5
    threading.Timer(0.5, a.release).start()
    b = CoordinatorLease(tmp_path, "flow-run-banana", wait_s=10, poll_s=0.1).acquire()
    assert json.loads(lease_path(tmp_path).read_text())["run"] == "flow-run-banana" and b.took_over is None
    b.release()


@pytest.mark.parametrize("case", ["dead pid", "silent heartbeat", "other process on the pid", "unreadable"])
def test_a_stale_lease_is_taken_over(tmp_path, case):
    if case == "dead pid":
        _plant(tmp_path, pid=_dead_pid())
    elif case == "silent heartbeat":
        _plant(tmp_path, host="another-host", heartbeat=time.time() - 120)
    elif case == "other process on the pid":  # our pid, but started at another time: reused
        _plant(tmp_path, pid_start="1")
    else:
        path = _plant(tmp_path)
        path.write_bytes(b"\x00{not json")
        os.utime(path, (time.time() - 600, time.time() - 600))
    with CoordinatorLease(tmp_path, "new-run", stale_after_s=60) as lease:
        assert json.loads(lease_path(tmp_path).read_text())["run"] == "new-run"
        assert lease.took_over is not None


def test_a_live_lease_is_not_taken_over(tmp_path):
    _plant(tmp_path, host="another-host")  # fresh heartbeat from elsewhere
    with pytest.raises(CoordinatorBusy, match="'old-run' \\(host another-host"):
        CoordinatorLease(tmp_path, "new-run").acquire()
    _plant(tmp_path, pid=os.getppid(), pid_start=None)  # a live process on this host
    with pytest.raises(CoordinatorBusy, match="old-run"):
        CoordinatorLease(tmp_path, "new-run").acquire()
    fresh_unreadable = lease_path(tmp_path)
    fresh_unreadable.write_bytes(b"")  # being written, or cut: only once it is old
    with pytest.raises(CoordinatorBusy):
        CoordinatorLease(tmp_path, "new-run").acquire()


def test_a_lease_taken_over_meanwhile_is_lost_and_not_removed(tmp_path):
    lease = CoordinatorLease(tmp_path, "slow-run", heartbeat_s=0.1).acquire()
    _plant(tmp_path, run="taker", token="other")
    deadline = time.monotonic() + 5
    while not lease.lost and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lease.lost
    lease.release()
    assert json.loads(lease_path(tmp_path).read_text())["run"] == "taker"


def _coordinator(items, out, name, wait_s, results, errors, start):
    """What edit-batch's coordinator does around its work: the lease, then the shard."""
    from lcd.config import EditConfig, ModelsConfig
    from lcd.jobs import tables
    from lcd.jobs.editing import run_edit_shard

    start.wait()
    try:
        with CoordinatorLease(out, name, wait_s=wait_s, poll_s=0.05):
            rep = run_edit_shard(items, out_root=out, cfg=EditConfig(size=64, batch_size=2),
                                 models=ModelsConfig(sd="/unused"), engine="noop", shard="00000-of-00001",
                                 standin_batch_s=0.2)
            tables.write_shard_tables(out, "00000-of-00001", rep.results, rep.failures, rep.hashes)
            results[name] = rep.counts()
    except CoordinatorBusy as e:
        errors[name] = str(e)


@pytest.mark.parametrize("wait_s", [0.0, 30.0])
def test_two_coordinators_started_together_edit_each_item_once(tmp_path, wait_s):
    from tests.lcd.jobs.test_output_currency import make_job

    items, out = make_job(tmp_path)
    results, errors, start = {}, {}, threading.Barrier(2)
    threads = [threading.Thread(target=_coordinator, args=(items, out, n, wait_s, results, errors, start))
               for n in ("coord-1", "coord-2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sum(c["edited"] for c in results.values()) == len(items)
    if wait_s == 0:  # the second refuses, naming the first
        ((loser, msg),) = errors.items()
        (winner,) = results
        assert f"held by coordinator '{winner}'" in msg and loser != winner
    else:  # the second waits, then finds every item current
        assert errors == {} and sorted(c["skipped"] for c in results.values()) == [0, len(items)]
    assert not lease_path(out).exists()
