"""atomic_path: a temp beside the destination, renamed over it on success, removed on failure."""

import os
import re
import stat

import pytest

from lcd.io.atomic import atomic_path


def test_temp_is_a_new_hidden_file_beside_dest_and_becomes_dest(tmp_path):
    dest = tmp_path / "edits" / "a.png"  # the folder does not exist yet: made on the first write
    with atomic_path(dest) as tmp:
        assert tmp.parent == dest.parent and tmp.exists() and tmp.stat().st_size == 0
        assert re.fullmatch(r"\.a\.png\.[0-9a-f]{8}\.tmp", tmp.name)  # what editing._TEMP cleans up
        assert not dest.exists()
        tmp.write_bytes(b"new")
    assert dest.read_bytes() == b"new" and os.listdir(dest.parent) == ["a.png"]
    with atomic_path(dest) as tmp2:
        tmp2.write_bytes(b"newer")
    assert dest.read_bytes() == b"newer" and os.listdir(dest.parent) == ["a.png"]


def test_a_failing_writer_leaves_neither_temp_nor_dest_and_keeps_the_old_file(tmp_path):
    dest = tmp_path / "a.png"
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(dest) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("disk full")
    assert os.listdir(tmp_path) == []
    dest.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(dest) as tmp:
            raise RuntimeError("disk full")
    assert os.listdir(tmp_path) == ["a.png"] and dest.read_bytes() == b"old"


def test_temps_of_concurrent_writers_to_one_dest_are_distinct_and_the_mode_follows_the_umask(tmp_path):
    dest = tmp_path / "a.png"
    old = os.umask(0o077)
    try:
        with atomic_path(dest) as t1, atomic_path(dest) as t2:
            assert t1 != t2
            assert stat.S_IMODE(t1.stat().st_mode) == 0o600  # created 0666, the kernel applies the umask
            t1.write_bytes(b"1")
            t2.write_bytes(b"2")
    finally:
        os.umask(old)
    assert dest.read_bytes() == b"1"  # t2 renamed first (inner block), t1 last
    assert os.listdir(tmp_path) == ["a.png"]


def test_a_parent_that_is_a_file_is_an_oserror(tmp_path):
    (tmp_path / "edits").write_bytes(b"not a folder")
    with pytest.raises(OSError):
        with atomic_path(tmp_path / "edits" / "a.png"):
            pass
