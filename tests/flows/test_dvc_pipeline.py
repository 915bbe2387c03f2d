"""`dvc repro` of the real dvc.yaml and params.yaml (copied unchanged) in a temporary git
repository, as on a fresh clone: stage commands running the flows on the tiny models."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from flows.pipeline import STAGES

pytestmark = [pytest.mark.server, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
COPY = ["lcd", "flows", "tasks", "samples", "dvc.yaml", "data.dvc", ".dvc/config", ".dvcignore", ".gitignore"]


def _ran(out: str) -> set[str]:
    return set(re.findall(r"Running stage '(\w+)'", out))


@pytest.fixture
def dvc_repo(tmp_path, tiny_dir, prefect_server):
    root = tmp_path / "repo"
    for rel in COPY:
        src, dst = REPO / rel, root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__")) if src.is_dir() else shutil.copy(src, dst)
    # regset reads the bundled LAION-style shard (data/laion-meta; its links are dead on purpose),
    # so it runs offline and fills its shortfall with class images from the tiny SD
    assert (root / "dvc.yaml").read_bytes() == (REPO / "dvc.yaml").read_bytes()
    # params.yaml as shipped (the tiny models under models/tiny, CPU-sized): what a fresh clone runs
    # after `lcd models tiny models/tiny`; the session's tiny models are those same files
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    (root / "models").mkdir()
    (root / "models" / "tiny").symlink_to(tiny_dir, target_is_directory=True)
    env = {**prefect_server.env, "PYTHONPATH": str(root),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

    def run(*args: str) -> str:
        out = subprocess.run(list(args), cwd=root, env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, f"{args} -> {out.returncode}\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
        return out.stdout + out.stderr

    run("git", "init", "-q")
    run(sys.executable, "-m", "lcd", "data", "init")
    return root, run


def test_dvc_repro_runs_each_stage_once_and_reruns_only_dependents(dvc_repo):
    root, run = dvc_repo
    dvc = [sys.executable, "-m", "dvc"]
    # the materialised data/ has exactly the bytes data.dvc records: only the (fresh) cache lacks it
    recorded = (root / "data.dvc").read_bytes()
    assert "not in cache" in run(*dvc, "status", "data.dvc")
    run(*dvc, "commit", "--force", "data.dvc")
    assert (root / "data.dvc").read_bytes() == recorded
    assert "up to date" in run(*dvc, "status", "data.dvc")
    assert _ran(run(*dvc, "repro")) == set(STAGES)
    # dead links -> exactly top_n generated class images, recorded as such
    (manifest,) = (root / "outputs/regset").glob("*/manifest.parquet")
    regset = pd.read_parquet(manifest)
    params = yaml.safe_load((root / "params.yaml").read_text())
    assert len(regset) == params["regset"]["top_n"] and set(regset["source"]) == {"generated"}
    edits = sorted(p.stem for p in (root / "outputs/edit/edits").glob("*.png"))
    # all five manifest items: the concept item uses the trained concept, the `sam:` item the masks store
    assert edits == sorted(["backpack_00", "cat_00", "teapot_00", "cat_00-dog", "teapot_00-sam"])
    assert _ran(run(*dvc, "repro")) == set()  # nothing changed: nothing runs
    params["edit"]["guidance"] = 3.0
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    downstream = {"edit", "evaluate"}
    assert _ran(run(*dvc, "repro")) == downstream  # regset, train, masks untouched
    metrics = json.loads(run(*dvc, "metrics", "show", "--json"))
    (rev,) = metrics.values()  # the workspace (keyed "" while the temp repo has no commit)
    summary = rev["data"]["outputs/edit/summary.json"]["data"]
    assert summary == {"edited": len(edits), "failed": 5 - len(edits), "items": 5, "skipped": 0}
    plots = json.loads(run(*dvc, "plots", "show", "--json"))
    (plot,) = plots["data"]["outputs/edit/edit_seconds.csv"]
    assert sorted(v["item"] for v in plot["content"]["data"]["values"]) == edits
    (loss,) = plots["data"]["outputs/train_loss.csv"]
    assert [int(v["step"]) for v in loss["content"]["data"]["values"]] == list(range(1, params["train"]["steps"] + 1))
    assert "metrics.json" in json.dumps(metrics)
