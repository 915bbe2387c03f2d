"""The file-hash memo: what a shard run used, kept as rows, trusted only while size and stamp match."""

import os

import pytest

from lcd.io import hashing


@pytest.fixture(autouse=True)
def empty_memo(monkeypatch):
    monkeypatch.setattr(hashing, "_HASH_CACHE", {})


def test_a_log_collects_the_files_hashed_inside_it_and_rows_round_trip(tmp_path):
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"aaa")
    b.write_bytes(b"bbb")
    hashing.sha256_file(b)  # before the scope: not logged
    with hashing.hash_log() as used:
        ha = hashing.sha256_file(a)
        hashing.sha256_file(a)  # a memo hit is logged too (once)
    rows = hashing.hash_rows(used)
    assert [(r["path"], r["size"], r["sha256"]) for r in rows] == [(str(a), 3, ha)]
    assert rows[0]["stamp"] == str(os.stat(a).st_mtime_ns)


def test_remembered_rows_spare_the_read_while_size_and_mtime_match_and_not_after(tmp_path, monkeypatch):
    a = tmp_path / "a.bin"
    a.write_bytes(b"aaa")
    with hashing.hash_log() as used:
        real = hashing.sha256_file(a)
    rows = hashing.hash_rows(used)
    monkeypatch.setattr(hashing, "_HASH_CACHE", {})  # a new process
    reads = []
    real_open = open
    monkeypatch.setattr(hashing, "open", lambda p, *a, **k: reads.append(p) or real_open(p, *a, **k), raising=False)
    assert hashing.remember_hashes(rows) == 1
    assert hashing.sha256_file(a) == real and reads == []
    a.write_bytes(b"bbbb")  # new size and mtime: the row no longer applies
    assert hashing.sha256_file(a) != real and reads == [str(a)]
    assert hashing.remember_hashes(rows) == 0  # already known: nothing added


def test_a_wrong_remembered_row_for_another_stamp_is_never_used(tmp_path):
    a = tmp_path / "a.bin"
    a.write_bytes(b"aaa")
    st = os.stat(a)
    hashing.remember_hashes([{"path": str(a), "size": 3, "stamp": str(st.st_mtime_ns + 1), "sha256": "0" * 64}])
    assert hashing.sha256_file(a) != "0" * 64


def test_hash_log_scopes_with_equal_sets_close_in_any_order(tmp_path):
    """Two shards run as threads of one process open two scopes that collect the same keys (equal
    sets); closing them in either order must close each one's own scope, never raise."""
    from lcd.io.hashing import _LOGS, hash_log, sha256_file

    f = tmp_path / "a.bin"
    f.write_bytes(b"x")
    outer = hash_log()
    first = outer.__enter__()
    inner = hash_log()
    second = inner.__enter__()
    sha256_file(f)
    assert first == second and first is not second
    inner.__exit__(None, None, None)  # the later one closes first: its own set leaves, not the equal older one
    assert len(_LOGS) == 1 and _LOGS[0] is first
    (tmp_path / "b.bin").write_bytes(b"y")
    sha256_file(tmp_path / "b.bin")  # only the open scope collects it
    assert len(first) == 2 and len(second) == 1
    outer.__exit__(None, None, None)
    assert _LOGS == []
