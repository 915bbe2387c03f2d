"""Metadata shards: local files, folders, globs, fsspec URLs; errors name the shard."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lcd.errors import LcdError
from lcd.regset.config import RegsetConfig
from lcd.regset.sources import expand_shards, read_shard


def test_read_shard_drops_null_rows_and_hashes_content(tmp_path, write_shard):
    p = write_shard(tmp_path / "s0.parquet", ["u1", None, "u3", "u4"], ["a dog", "b", None, "  "],
                    similarity=[0.3, 0.2, 0.1, 0.0])
    s = read_shard(str(p))
    assert s.urls == ["u1"] and s.captions == ["a dog"] and s.dropped == 3
    again = read_shard(str(p))
    assert again.sha256 == s.sha256
    write_shard(p, ["u1"], ["a cat"])
    assert read_shard(str(p)).sha256 != s.sha256


def test_laion_column_names(tmp_path):
    p = tmp_path / "laion.parquet"
    pq.write_table(pa.table({"URL": ["u"], "TEXT": ["a dog"], "WIDTH": [10], "HEIGHT": [10]}), p)
    assert read_shard(str(p), url_col="URL", caption_col="TEXT").urls == ["u"]
    with pytest.raises(LcdError, match=r"laion.parquet: missing column\(s\) \['url', 'caption'\]"):
        read_shard(str(p))


def test_fsspec_url(tmp_path, write_shard):
    import fsspec

    local = write_shard(tmp_path / "s.parquet", ["u1", "u2"], ["a", "b"])
    with fsspec.open("memory://regset/s.parquet", "wb") as f:
        f.write(local.read_bytes())
    s = read_shard("memory://regset/s.parquet")
    assert s.urls == ["u1", "u2"] and s.sha256 == read_shard(str(local)).sha256


def test_expand_folder_and_glob(tmp_path, write_shard):
    for i in (1, 0):
        write_shard(tmp_path / "m" / f"part-{i}.parquet", ["u"], ["c"])
    (tmp_path / "m" / "README.txt").write_text("x")
    want = [str(tmp_path / "m" / f"part-{i}.parquet") for i in (0, 1)]
    assert expand_shards([str(tmp_path / "m")]) == want
    assert expand_shards([str(tmp_path / "m" / "part-*.parquet")]) == want


def test_shard_errors(tmp_path):
    with pytest.raises(LcdError, match="regset.shards is empty"):
        expand_shards([])
    with pytest.raises(LcdError, match="nope.parquet: no metadata Parquet shard found"):
        expand_shards([str(tmp_path / "nope.parquet")])
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    with pytest.raises(LcdError, match="bad.parquet: not a Parquet file"):
        read_shard(str(bad))


def test_config_rules():
    with pytest.raises(ValueError, match="needs backend_url"):
        RegsetConfig(source="clip_back")
    with pytest.raises(ValueError, match="extra_forbidden|Extra inputs"):
        RegsetConfig(treshold=0.9)
    assert RegsetConfig().threshold == 0.85 and RegsetConfig().top_n == 200
