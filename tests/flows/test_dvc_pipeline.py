"""`dvc repro` of the real dvc.yaml (copied unchanged) in a temporary git repository, stage
commands running the flows; only params.yaml is pointed at the tiny models."""

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
    params = yaml.safe_load((REPO / "params.yaml").read_text())  # the real file, on the tiny models
    params["models"].update(sd=str(tiny_dir / "sd"), sam=str(tiny_dir / "sam" / "sam_vit_tiny.pth"),
                            clip=str(tiny_dir / "clip"))
    params["edit"].update(steps=2, size=64, guidance=6.0)
    # random SAM weights score low: keep every mask, so the manifest's `sam:` row has some
    params["masks"]["auto"].update(points_per_side=4, points_per_batch=16, pred_iou_thresh=0.0,
                                   stability_score_thresh=0.0)
    params["regset"].update(clip_model=str(tiny_dir / "open_clip"), top_n=2, timeout_s=2, threads=2,
                            gen_size=64, gen_steps=2)
    params["evaluate"].update(dino=str(tiny_dir / "dino"))
    params["train"].update(steps=2, resolution=64, batch_size=1, prior=False, min_photo_px=64, checkpoint_every=0,
                           progress=False)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
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
    assert len(regset) == 2 and set(regset["source"]) == {"generated"}
    edits = sorted(p.stem for p in (root / "outputs/edit/edits").glob("*.png"))
    # all five manifest items: the concept item uses the trained concept, the `sam:` item the masks store
    assert edits == sorted(["backpack_00", "cat_00", "teapot_00", "cat_00-dog", "teapot_00-sam"])
    assert _ran(run(*dvc, "repro")) == set()  # nothing changed: nothing runs
    params = yaml.safe_load((root / "params.yaml").read_text())
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
    assert [int(v["step"]) for v in loss["content"]["data"]["values"]] == [1, 2]
    assert "metrics.json" in json.dumps(metrics)
