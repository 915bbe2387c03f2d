"""Orchestration overhead per item: edit-batch on a 10,000-item manifest of no-op edits.

The `noop` engine copies each input to its output, so what is timed is everything around the
model: manifest parsing and validation, sharding, per-item input hashing and skip checks, image
reads, atomic PNG writes with metadata, Parquet tables, Prefect flow/task runs and artifacts.
Prefect runs in-process against a temporary local server (started before timing) with its own
PREFECT_HOME. Prints JSON; the last line is one object with `items`, `overhead_ms_per_item`.

    python bench/orchestration.py [--items 10000] [--shards 4]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_job(root: Path, items: int, side: int = 64) -> tuple[Path, Path]:
    """A few small scenes + masks, and a manifest of `items` edits cycling through them."""
    rng = np.random.default_rng(0)
    for k in range(8):
        Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(root / f"s{k}.png")
        m = np.zeros((side, side), np.uint8)
        m[side // 4 : 3 * side // 4, side // 4 : 3 * side // 4] = 255
        Image.fromarray(m).save(root / f"m{k}.png")
    manifest = root / "edits.jsonl"
    with open(manifest, "w") as f:
        for i in range(items):
            f.write(json.dumps({"id": f"item{i:06d}", "image": f"s{i % 8}.png", "mask": f"m{i % 8}.png",
                                "prompt": "a photo of a dog", "seed": i}) + "\n")
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump({"edit": {"size": 64, "batch_size": 64}}))
    return manifest, params


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--shards", type=int, default=4)
    a = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="lcd-bench-orch-"))
    os.environ.setdefault("PREFECT_HOME", str(root / "prefect-home"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")  # 2 busy cores
    manifest, params = make_job(root, a.items)

    from flows.edit_batch import edit_batch

    # warm-up: starts the temporary Prefect server and imports everything (not timed)
    (root / "warm").mkdir()
    warm, _ = make_job(root / "warm", 2)
    edit_batch(str(warm), str(root / "warm-out"), str(params), num_shards=1, fan_out="inline", engine="noop")
    runs = {}
    for label in ("first", "resume"):  # resume: every output is current, every item is skipped
        t0 = time.perf_counter()
        counts = edit_batch(str(manifest), str(root / "out"), str(params), num_shards=a.shards,
                            fan_out="inline", engine="noop")
        runs[label] = {"seconds": round(time.perf_counter() - t0, 3), **counts}
        print(json.dumps({label: runs[label]}))
    assert runs["first"]["edited"] == a.items and runs["resume"]["skipped"] == a.items, runs
    per_item = runs["first"]["seconds"] * 1000 / a.items
    print(json.dumps({
        "items": a.items, "shards": a.shards, "engine": "noop", "fan_out": "inline",
        "overhead_ms_per_item": round(per_item, 3),
        "resume_ms_per_item": round(runs["resume"]["seconds"] * 1000 / a.items, 3),
        "target_ms_per_item": 5.0, "meets_target": per_item <= 5.0,
    }))


if __name__ == "__main__":
    main()
