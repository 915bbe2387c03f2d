"""bench/reliability.py --quick: adversarial inputs through edit-batch and bad CLI invocations lose
no good item, hang nothing, print no traceback, and the pixel bomb stays small in memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_reliability_quick_suite_loses_nothing():
    out = subprocess.run([sys.executable, "bench/reliability.py", "--quick", "--timeout", "60"], cwd=REPO,
                         env=dict(os.environ), capture_output=True, text=True, timeout=420)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    res = json.loads(lines[-1])
    rows = [json.loads(x) for x in lines[:-1]]
    assert res["quick"] is True and res["inputs_tried"] >= 50 and res["good_items"] >= 5, res
    for k in ("good_items_lost", "hangs", "tracebacks", "not_exit_2", "multi_line", "unaccounted", "escaped",
              "code_executed"):
        assert res[k] == 0, (k, res, lines[:-1])
    assert 0 < res["peak_rss_mb"] < 2000, res
    # every misbehaving server mode ran, each shard within its deadline plus a few seconds
    assert res["deadline_s"] and 0 < res["max_item_wait_s"] <= res["deadline_s"] + 3, res
    network = next(r for r in rows if r["case"] == "network")["notes"]
    assert set(network["modes"]) >= {"never", "stall", "slow", "endless", "huge", "short", "second"}, network
    outputs = next(r for r in rows if r["case"] == "outputs")["notes"]
    assert outputs["broken"] and set(outputs["broken"].values()) == {"edited"}, outputs
    concepts = next(r for r in rows if r["case"] == "concepts")["notes"]
    assert len(concepts["failures"]["first"]) == concepts["inputs"] >= 9, concepts
    assert all("/concepts/" in m for m in concepts["failures"]["first"].values()), concepts
    masks = next(r for r in rows if r["case"] == "masks")
    assert len(masks["notes"]["failures"]) == 5 and masks["rss_mb"] < 1000, masks  # 10^5 masks, 40k rows
    folders = [r for r in rows if r["case"].startswith("model folder")]
    assert len(folders) >= 5 and all("refusing to import code" in r["stderr"] for r in folders), folders
    batch = next(r for r in rows if r["case"] == "batch")["notes"]
    assert batch["first run"]["failed"] == batch["first run"]["expected_failures"] > 40
    assert batch["second manifest, same out_root"]["outcome"].startswith("refused: out_root")
    bomb = next(r for r in rows if r["case"] == "edit image bomb")
    assert bomb["rc"] == 2 and "625 MP, above the limit" in bomb["stderr"]
