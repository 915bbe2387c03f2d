"""`lcd regset build` from params.yaml: prints its report as the last line; bad params exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lcd.regset.manifest import read_manifest


@pytest.mark.slow
def test_cli_build_generates_when_nothing_passes(tmp_path, tiny_dir, tiny_open_clip, write_shard):
    write_shard(tmp_path / "meta.parquet", ["http://127.0.0.1:9/a.jpg"], ["a red car"])
    params = {
        "models": {"sd": str(tiny_dir / "sd")},
        "regset": {"class_prompt": "dog", "shards": [str(tmp_path / "meta.parquet")], "clip_model": str(tiny_open_clip),
                   "threshold": 0.9999, "top_n": 2, "gen_size": 64, "gen_steps": 2},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    cmd = [sys.executable, "-m", "lcd", "--params", str(tmp_path / "params.yaml"), "regset", "build",
           "--out", str(tmp_path / "rs")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["selected"] == 0 and report["shortfall"] == 2 and report["generated"] == 2
    assert [r["source"] for r in read_manifest(tmp_path / "rs")] == ["generated"] * 2
    assert len((tmp_path / "rs" / "images.txt").read_text().splitlines()) == 2


def test_cli_bad_override_is_one_line_exit_2(tmp_path, capsys):
    from lcd.cli import main

    (tmp_path / "defaults.yaml").write_text("")  # empty: the built-in defaults
    rc = main(["--params", str(tmp_path / "defaults.yaml"), "regset", "build", "--out", str(tmp_path), "--top-n", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert "regset.top_n: Input should be greater than or equal to 1" in err
