"""lcd.io.storage's pure parts: which key prefixes a shard's outputs are looked up under."""

from __future__ import annotations

import uuid

from lcd.io.storage import name_prefixes, present_names


def test_counter_ids_get_prefixes_as_narrow_as_the_limit_allows():
    shard = [f"item{i:06d}.png" for i in range(5000, 10000)]  # shard 1 of a 1M-item job, 5,000 a shard
    assert name_prefixes(shard, 10) == ["item005", "item006", "item007", "item008", "item009"]
    across = [f"item{i:06d}.png" for i in range(98000, 103000)]  # a shard over a decimal boundary
    assert name_prefixes(across, 10) == ["item098", "item099", "item100", "item101", "item102"]
    assert name_prefixes(across, 1) == ["item"]


def test_every_name_starts_with_one_of_its_prefixes():
    names = [f"item{i:06d}.png" for i in range(98000, 103000)] + ["a", "ab", "zz.png"]
    for limit in (1, 2, 4, 10, 100, 10_000):
        cut = name_prefixes(names, limit)
        assert len(cut) <= limit or cut == [""]
        assert all(any(n.startswith(p) for p in cut) for n in names)


def test_ids_that_share_nothing_fall_back_to_one_listing():
    assert name_prefixes([uuid.uuid4().hex for _ in range(5000)], 10) == [""]
    assert name_prefixes([], 4) == [""]
    assert name_prefixes(["a", "ab", "ac", "b"], 4) == ["a", "b"]  # "ab" and "ac" are listed under "a"


def test_a_local_folder_is_stat_ed_name_by_name(tmp_path):
    (tmp_path / "x.png").write_bytes(b"")
    (tmp_path / "y.png").symlink_to(tmp_path / "gone")  # present as an entry even if dangling
    assert present_names(tmp_path, ["x.png", "y.png", "z.png"]) == {"x.png", "y.png"}
