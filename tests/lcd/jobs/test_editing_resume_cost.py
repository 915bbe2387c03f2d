"""What a resumed shard with nothing to do pays: no torch import (1-3 s of every shard run's
process start, issue 12), and an input rewritten in place still redoes its item."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[3]

SHARD = textwrap.dedent("""
    import json, sys
    from lcd.config import EditConfig, ModelsConfig
    from lcd.jobs.editing import run_edit_shard
    from lcd.jobs.manifest import read_manifest
    from lcd.jobs import tables

    root = sys.argv[1]
    items = read_manifest(root + "/edits.jsonl")[0]
    rep = run_edit_shard(items, out_root=root + "/out", cfg=EditConfig(size=64, batch_size=2),
                         models=ModelsConfig(sd="/unused/in/noop"), engine="noop", shard="00000-of-00001")
    tables.write_table(tables.shard_table_path(root + "/out", "results", "00000-of-00001"), rep.results,
                       tables.RESULTS_SCHEMA)
    print(json.dumps({**rep.counts(), "torch": "torch" in sys.modules}))
""")


def _shard(root: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", SHARD, str(root)], env=env, capture_output=True, text=True,
                         check=True, cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_resume_with_everything_current_does_not_import_torch_and_a_rewritten_input_is_redone(tmp_path):
    rng = np.random.default_rng(0)
    for k in range(2):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / f"s{k}.png")
    m = np.zeros((32, 32), np.uint8)
    m[8:24, 8:24] = 255
    Image.fromarray(m).save(tmp_path / "m.png")
    lines = [{"id": f"i{k}", "image": f"s{k % 2}.png", "mask": "m.png", "prompt": "a dog", "seed": k}
             for k in range(4)]
    (tmp_path / "edits.jsonl").write_text("\n".join(json.dumps(x) for x in lines))

    first = _shard(tmp_path)
    assert (first["edited"], first["skipped"], first["failed"]) == (4, 0, 0)
    assert first["torch"] is False  # the noop engine edits without the model stack
    resume = _shard(tmp_path)
    assert (resume["edited"], resume["skipped"]) == (0, 4)
    assert resume["torch"] is False

    # same path, same size, new bytes (and a new mtime): the two items of that scene are redone
    before = (tmp_path / "s1.png").stat()
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "new.png")
    data = (tmp_path / "new.png").read_bytes()
    if len(data) == before.st_size:
        (tmp_path / "s1.png").write_bytes(data)
    else:  # keep the size: flip bytes of a pixel in place (the PNG stays the same length)
        raw = bytearray((tmp_path / "s1.png").read_bytes())
        raw[-20] ^= 0xFF
        (tmp_path / "s1.png").write_bytes(bytes(raw))
    os.utime(tmp_path / "s1.png", ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000))
    assert (tmp_path / "s1.png").stat().st_size == before.st_size
    again = _shard(tmp_path)
    assert (again["edited"] + again["failed"], again["skipped"]) == (2, 2)
