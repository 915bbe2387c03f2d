"""One coordinator per output root: a lease `<out_root>/tables/coordinator.lease`.

Why: two coordinators started together on one manifest and out_root both found every item
pending and both edited all of it (twice the GPU time, both reporting every item edited). The
lease is taken before the plan is read and given back at the end; a second coordinator of the
job waits for it (bounded by `wait_s`) and then refuses with one line naming the running one.

The lease is a small JSON document {run, host, pid, pid_start, started, heartbeat, token}:
- a local (or shared-filesystem) out_root creates it exclusively (written whole to a temp file,
  then hard-linked into place: `link` fails if the name exists, as O_EXCL would, and a reader
  never sees half a lease); taking over, beating and giving back happen under an flock of the
  tables/ folder, so two contenders never both take a stale lease;
- object storage creates it with a conditional PUT (If-None-Match: *), beats and takes over with
  If-Match on the ETag read (another writer in between makes the PUT fail, not overwrite);
  where the filesystem has no conditional writes, create-then-read-back decides (best effort).
A thread refreshes `heartbeat` every `heartbeat_s`. A lease is stale, and taken over, when its
holder's pid is dead on this host (or is another process than the one that took it, by its
start time), or its heartbeat is older than `stale_after_s` (a holder on another host, or hung).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from lcd.errors import CoordinatorBusy
from lcd.io import storage

LEASE_NAME = "coordinator.lease"


def lease_path(out_root: str | Path) -> str | Path:
    return storage.join(out_root, "tables", LEASE_NAME)


def _pid_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22): with the
    pid, it names one process even after the pid is reused. None where /proc is absent."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw.rsplit(")", 1)[1].split()[19]


def _pid_alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        pass
    now = _pid_start(pid)
    return start is None or now is None or now == start


class CoordinatorLease:
    """`with CoordinatorLease(out_root, run):` holds the out_root's lease for the block.
    `run` names this coordinator (its flow run name) in the JSON and in a refusal. `wait_s`: how
    long a second coordinator waits for the lease before refusing (CoordinatorBusy); `took_over`
    is the stale lease this one replaced (None if there was none); `lost` turns True if another
    coordinator took the lease over meanwhile (this one's heartbeat had stopped too long)."""

    def __init__(self, out_root: str | Path, run: str, *, wait_s: float = 0.0, heartbeat_s: float = 5.0,
                 stale_after_s: float = 60.0, poll_s: float = 1.0):
        self.out_root, self.path = storage.normalize(out_root), lease_path(out_root)
        self.run, self.wait_s, self.heartbeat_s = run, wait_s, heartbeat_s
        self.stale_after_s, self.poll_s = stale_after_s, poll_s
        self.token = secrets.token_hex(8)
        self.took_over: dict | None = None
        self.lost = False
        self._etag: str | None = None  # object storage: the ETag of our lease as last written
        self._stop = threading.Event()
        self._beater: threading.Thread | None = None
        pid = os.getpid()
        self.info = {"run": run, "host": socket.gethostname(), "pid": pid, "pid_start": _pid_start(pid),
                     "started": _now(), "heartbeat": time.time(), "token": self.token}

    # 1. take the lease (or wait for it, then refuse naming its holder)
    def acquire(self) -> "CoordinatorLease":
        deadline = time.monotonic() + max(0.0, self.wait_s)
        while True:
            holder = self._try_take()
            if holder is None:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                raise CoordinatorBusy(_busy_message(self.out_root, holder, self.wait_s), item=str(self.path))
            time.sleep(min(self.poll_s, left))
        self._beater = threading.Thread(target=self._beat, name="lcd-lease-heartbeat", daemon=True)
        self._beater.start()
        return self

    def stale(self, holder: dict | None) -> bool:
        """Whether a lease read back (None: unreadable) is a dead or silent holder's."""
        if holder is None:
            return True
        age = time.time() - float(holder.get("heartbeat") or 0)
        if age > self.stale_after_s:
            return True
        if holder.get("host") == self.info["host"] and isinstance(holder.get("pid"), int):
            return not _pid_alive(holder["pid"], holder.get("pid_start"))
        return False

    # 2. heartbeat; 3. give it back
    def release(self) -> None:
        self._stop.set()
        if self._beater is not None:
            self._beater.join(timeout=self.heartbeat_s + 5)
        if self.lost:
            return
        with self._locked():
            holder, etag = self._read()
            if holder is not None and holder.get("token") == self.token:
                storage.remove(self.path)

    def __enter__(self) -> "CoordinatorLease":
        return self if self._beater is not None else self.acquire()  # taken already: hold it for the block

    def __exit__(self, *exc) -> None:
        self.release()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                with self._locked():
                    holder, etag = self._read()
                    if holder is None or holder.get("token") != self.token:
                        self.lost = True
                        return
                    self.info["heartbeat"] = time.time()
                    self._write(replace_etag=etag)
            except Exception:  # noqa: BLE001 - a failed beat is retried; a missed one only ages the lease
                continue

    def _try_take(self) -> dict | None:
        """Take the lease if it is free or stale -> None; else the holder's JSON."""
        with self._locked():
            holder, etag = self._read()
            if etag is None:  # no lease
                return None if self._write(create=True) else {"run": "?", "note": "created meanwhile"}
            if not self.stale(holder):
                return holder
            if holder is not None or self._old_unreadable():
                if self._write(replace_etag=etag):
                    self.took_over = holder or {"run": "unreadable lease"}
                    return None
            return holder or {"run": "unreadable lease", "note": "being written"}

    def _old_unreadable(self) -> bool:
        """An unreadable lease (foreign, or cut by a full disk) counts as stale once it is old."""
        entry = storage.stat_entry(self.path) if not storage.is_remote(self.path) else None
        return entry is None or time.time() - int(entry.stamp.split(":")[0]) / 1e9 > self.stale_after_s

    def _read(self) -> tuple[dict | None, str | None]:
        """(the lease's JSON or None if unreadable, its version: mtime_ns locally, ETag remotely;
        None when there is no lease)."""
        try:
            if storage.is_remote(self.path):
                fs, key = storage.filesystem(str(self.path))
                info = fs.info(key, refresh=True) if "refresh" in _params(fs.info) else fs.info(key)
                version = str(info.get("ETag") or info.get("mtime") or info.get("created") or "")
                raw = fs.cat_file(key)
            else:
                version = str(os.lstat(self.path).st_mtime_ns)
                raw = Path(self.path).read_bytes()
        except FileNotFoundError:
            return None, None
        try:
            doc = json.loads(raw)
        except ValueError:
            return None, version
        return (doc if isinstance(doc, dict) else None), version

    def _write(self, create: bool = False, replace_etag: str | None = None) -> bool:
        """Write this lease: `create` only if there is none, else over the version read. -> done."""
        data = json.dumps(self.info, sort_keys=True).encode()
        if storage.is_remote(self.path):
            return self._put_remote(data, create, replace_etag)
        path = Path(self.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{self.token}.{secrets.token_hex(4)}.tmp")
        tmp.write_bytes(data)
        try:
            if create:
                try:
                    os.link(tmp, path)  # exclusive, like O_EXCL, and the lease appears whole
                except FileExistsError:
                    return False
            else:
                os.replace(tmp, path)  # under the flock: nobody else writes the lease meanwhile
                tmp = None
        finally:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
        return True

    def _put_remote(self, data: bytes, create: bool, replace_etag: str | None) -> bool:
        fs, key = storage.filesystem(str(self.path))
        protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
        try:
            if "s3" in protocols:  # conditional PUT: If-None-Match: * to create, If-Match: <ETag> to replace
                fs.pipe_file(key, data, **({"mode": "create"} if create else
                                           {"IfMatch": replace_etag} if replace_etag else {}))
            else:  # no conditional writes here: create-then-read-back, best effort
                if create and fs.exists(key):
                    return False
                fs.pipe_file(key, data)
        except FileExistsError:
            return False
        except OSError as e:
            if "pre-condition" in str(e).lower() or "precondition" in str(e).lower():
                return False  # another coordinator wrote the lease between our read and this PUT
            raise
        fs.invalidate_cache(key)
        doc, _ = self._read()
        return doc is not None and doc.get("token") == self.token

    @contextlib.contextmanager
    def _locked(self):
        """An flock around a read-decide-write of a local lease (object storage: the conditional
        PUT is the lock)."""
        if storage.is_remote(self.path):
            yield
            return
        import fcntl

        folder = Path(self.path).parent  # the folder itself is locked: no lock file is left behind
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor drops the flock


def _params(fn) -> set[str]:
    import inspect

    try:
        return set(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return set()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _busy_message(out_root, holder: dict, waited: float) -> str:
    age = time.time() - float(holder.get("heartbeat") or 0) if holder.get("heartbeat") else None
    beat = f", last heartbeat {age:.0f} s ago" if age is not None else ""
    return (f"out_root {out_root} is held by coordinator {holder.get('run')!r} (host {holder.get('host')}, "
            f"pid {holder.get('pid')}, since {holder.get('started')}{beat}); waited {waited:.0f} s: "
            f"wait for it to end or stop it")
