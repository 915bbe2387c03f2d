"""Time DVC itself spends on an edit stage of N outputs, in two layouts of dvc.yaml, same job.

- `images` (the layout before issue 12): the edited images folder is a (persisted, cached) out,
  so `dvc repro` hashes and caches every image and `dvc status` walks them all;
- `tables` (today's dvc.yaml): only results.parquet, the plan and the shard tables are outs; the
  images stay in the output root, named with their input hashes by results.parquet.

Each layout runs in its own temporary git + DVC repository; the stage command writes N small PNG
files (what a no-op edit shard writes) plus a results table, and records how long it ran itself,
so DVC's own time is `dvc repro` wall time minus the command's time, plus a following `dvc status`
(and a second `dvc repro`, which finds nothing to do). The last line printed is one JSON object.

    python bench/dvc_layout.py [--items 20000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STAGE_CMD = r'''
import json, sys, time, zlib, struct
from pathlib import Path
import pyarrow as pa, pyarrow.parquet as pq
t = time.perf_counter()
n = int(sys.argv[1])
out = Path("outputs/edit")
for d in ("edits", "tables", "plan"):
    (out / d).mkdir(parents=True, exist_ok=True)
def png(i):  # a valid 8x8 grey PNG, distinct per item
    raw = b"".join(b"\x00" + bytes([i % 251] * 8) for _ in range(8))
    def chunk(k, d):
        return struct.pack(">I", len(d)) + k + d + struct.pack(">I", zlib.crc32(k + d) & 0xffffffff)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 0, 0, 0, 0))
            + chunk(b"tEXt", b"input_hash\x00" + str(i).encode()) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
ids = [f"item{i:07d}" for i in range(n)]
for i, name in enumerate(ids):
    (out / "edits" / f"{name}.png").write_bytes(png(i))
t_ = pa.table({"id": ids, "output": [f"outputs/edit/edits/{x}.png" for x in ids], "input_hash": [str(i) for i in range(n)]})
pq.write_table(t_, out / "results.parquet")
pq.write_table(t_.select(["id"]), out / "plan" / "shard-00000-of-00001.parquet")
pq.write_table(t_, out / "tables" / "results-00000-of-00001.parquet")
Path("cmd_seconds.txt").write_text(str(time.perf_counter() - t))
'''

LAYOUTS = {
    "images": ["outputs/edit/edits:\n          persist: true", "outputs/edit/results.parquet"],
    "tables": ["outputs/edit/plan:\n          persist: true", "outputs/edit/tables:\n          persist: true",
               "outputs/edit/results.parquet"],
}


def run(cmd: list[str], cwd: Path, env: dict) -> float:
    t = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{cmd} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return time.perf_counter() - t


def measure(layout: str, items: int, root: Path) -> dict:
    repo = root / layout
    repo.mkdir()
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    dvc = [sys.executable, "-m", "dvc"]
    run(["git", "init", "-q"], repo, env)
    run([*dvc, "init", "-q"], repo, env)
    (repo / "stage.py").write_text(STAGE_CMD)
    outs = "".join(f"      - {o}\n" for o in LAYOUTS[layout])
    (repo / "dvc.yaml").write_text(f"stages:\n  edit:\n    cmd: {sys.executable} stage.py {items}\n"
                                   f"    deps:\n      - stage.py\n    outs:\n{outs}")
    repro = run([*dvc, "repro", "-q"], repo, env)
    cmd_s = float((repo / "cmd_seconds.txt").read_text())
    status = run([*dvc, "status", "-q"], repo, env)
    again = run([*dvc, "repro", "-q"], repo, env)
    return {"repro_s": repro, "stage_cmd_s": cmd_s, "dvc_repro_overhead_s": repro - cmd_s, "status_s": status,
            "noop_repro_s": again, "dvc_total_s": (repro - cmd_s) + status}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=20_000)
    a = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="lcd-bench-dvc-"))
    res = {layout: measure(layout, a.items, root) for layout in LAYOUTS}
    for k, v in res.items():
        print(json.dumps({k: v}))
    print(json.dumps({"bench": "dvc_layout", "items": a.items, **{f"{k}_dvc_s": round(v["dvc_total_s"], 2)
                                                                   for k, v in res.items()},
                      "ratio_images_over_tables": res["images"]["dvc_total_s"] / res["tables"]["dvc_total_s"]}))


if __name__ == "__main__":
    main()
