"""The README's "first hour" block, command by command, on a copy of the checkout as a fresh clone
has it (tracked files only, no outputs, no models): each command must succeed within its bound,
the long ones must print progress lines, and each leaves the files the README says it does. Its
last command is `dvc repro` of the real dvc.yaml and params.yaml. Until then `git status` of the
clone is empty (every step writes ignored files); `dvc repro` changes only dvc.lock and
metrics.json. The test then holds DVC to re-running only what changed (nothing; then edit +
evaluate after a guidance change)."""

from __future__ import annotations

import json
import re
import sys
import shutil
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

pytestmark = [pytest.mark.server, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
BOUND_S = 120  # per command, on 2 CPU cores (most take 5-30 s) ...
DVC_BOUND_S = 360  # ... but `dvc repro` runs all five stages, each a process loading its models


def first_hour_commands(readme: str) -> list[str]:
    """The bash block between the first-hour markers -> its commands (continuations joined)."""
    block = readme.split("<!-- first-hour:start -->", 1)[1].split("<!-- first-hour:end -->", 1)[0]
    body = block.split("```bash\n", 1)[1].rsplit("```", 1)[0]
    return [c.strip() for c in body.replace("\\\n", " ").splitlines() if c.strip()]


def _fresh_copy(dst: Path) -> None:
    """What `git clone` of this checkout gives (tracked + new, not ignored, files), as a git repo."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    (dst / ".venv").symlink_to(REPO / ".venv", target_is_directory=True)  # what scripts/install.sh made
    for args in (["init", "-q"], ["add", "-A"], ["-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "clone"]):
        subprocess.run(["git", *args], cwd=dst, check=True, capture_output=True)


# what each step must show on stderr/stdout (progress lines and closing counts from lcd.progress)
PROGRESS = {
    "lcd train": r"train: done, 4 steps in",
    "lcd masks compute": r"masks: done, 2 images in .*2 computed",
    "python -m flows edit": r"edit shard 00000-of-00001: done, \d+ items in",
    "dvc commit -f data.dvc && dvc repro": r"Running stage 'evaluate'",
}


def test_readme_first_hour_block_runs_on_a_fresh_copy(tmp_path, prefect_server):
    commands = first_hour_commands((REPO / "README.md").read_text())
    prelude, steps = commands[0], commands[1:]
    assert prelude.startswith("source scripts/env.sh") and len(steps) >= 10
    root = tmp_path / "clone"
    _fresh_copy(root)
    env = {k: v for k, v in prefect_server.env.items() if k != "PYTHONPATH"}  # the session's server, no temp ones
    seen, times = set(), {}
    for cmd in steps:
        if "dvc repro" in cmd:  # every step before it wrote only ignored files
            assert git_status(root) == [], f"the first hour left the clone dirty before `dvc repro`: {git_status(root)}"
        t0 = time.monotonic()
        proc = subprocess.run(["bash", "-c", f"set -euo pipefail\n{prelude}\n{cmd}\n"], cwd=root, env=env,
                              capture_output=True, text=True, timeout=DVC_BOUND_S + 60)
        took = times[cmd[:40]] = round(time.monotonic() - t0, 1)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, f"{cmd}\n-> {proc.returncode}\n{out[-4000:]}"
        assert "Traceback" not in proc.stderr, f"{cmd}\n{proc.stderr[-4000:]}"
        bound = DVC_BOUND_S if "dvc repro" in cmd else BOUND_S
        assert took < bound, f"{cmd} took {took} s (bound {bound} s; all: {times})"
        for prefix, pattern in PROGRESS.items():
            if cmd.startswith(prefix):
                assert re.search(pattern, out), f"{cmd}: no progress line /{pattern}/ in\n{out[-3000:]}"
                seen.add(prefix)
    assert seen == set(PROGRESS), f"README block lost a step: {set(PROGRESS) - seen}"
    # what the README says each step leaves behind
    for rel in ("models/tiny/sd/model_index.json", "data/manifests/edits.jsonl", "outputs/concepts/dog/concept.safetensors",
                "outputs/masks/failures.parquet", "outputs/cat_00-region.png", "outputs/first-edit.png",
                "outputs/edit/summary.json", "outputs/edit/contact_sheet.png", "outputs/first-eval/metrics.json",
                "dvc.lock", "metrics.json", "outputs/edit/edit_seconds.png", "outputs/train_loss.png"):
        assert (root / rel).is_file(), f"{rel} missing after the first hour ({times})"
    # `dvc repro` changes what a DVC user commits, and nothing else
    changed = {line[3:] for line in git_status(root)}
    assert "dvc.lock" in changed and changed <= {"dvc.lock", "metrics.json"}, git_status(root)
    print(times)
    _dvc_reruns_only_what_changed(root, env)


def git_status(root: Path) -> list[str]:
    """`git status --porcelain` lines (tracked changes and untracked, not ignored, files)."""
    out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=root, capture_output=True,
                         text=True, check=True).stdout
    return out.splitlines()


def _ran(out: str) -> set[str]:
    return set(re.findall(r"Running stage '(\w+)'", out))


def _dvc_reruns_only_what_changed(root: Path, env: dict) -> None:
    def dvc(*args: str) -> str:
        path = f"{root / '.venv' / 'bin'}:{env['PATH']}"  # as the README's prelude: stages run `python -m flows`
        out = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, env={**env, "PATH": path},
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, f"dvc {args} -> {out.returncode}\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
        return out.stdout + out.stderr

    # `lcd data init` materialised exactly the bytes data.dvc records (the commit changed nothing)
    assert subprocess.run(["git", "diff", "--quiet", "data.dvc"], cwd=root).returncode == 0
    # dead links -> exactly top_n generated class images, recorded as such
    (manifest,) = (root / "outputs/regset").glob("*/manifest.parquet")
    regset = pd.read_parquet(manifest)
    params = yaml.safe_load((root / "params.yaml").read_text())
    assert len(regset) == params["regset"]["top_n"] and set(regset["source"]) == {"generated"}
    edits = sorted(p.stem for p in (root / "outputs/edit/edits").glob("*.png"))
    # all five manifest items: the concept item uses the trained concept, the `sam:` item the masks store
    assert edits == sorted(["backpack_00", "cat_00", "teapot_00", "cat_00-dog", "teapot_00-sam"])
    assert _ran(dvc("repro")) == set()  # nothing changed: nothing runs
    params["edit"]["guidance"] = 3.0
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    assert _ran(dvc("repro")) == {"edit", "evaluate"}  # regset, train, masks untouched
    metrics = json.loads(dvc("metrics", "show", "--json"))
    (rev,) = metrics.values()
    summary = rev["data"]["outputs/edit/summary.json"]["data"]
    assert summary == {"edited": len(edits), "failed": 5 - len(edits), "items": 5, "skipped": 0}
    assert "metrics.json" in json.dumps(metrics)
    plots = json.loads(dvc("plots", "show", "--json"))
    (plot,) = plots["data"]["outputs/edit/edit_seconds.csv"]
    assert sorted(v["item"] for v in plot["content"]["data"]["values"]) == edits
    (loss,) = plots["data"]["outputs/train_loss.csv"]
    assert [int(v["step"]) for v in loss["content"]["data"]["values"]] == list(range(1, params["train"]["steps"] + 1))
    # each CSV plot has a PNG twin, which `dvc plots show` renders without Vega (offline-safe)
    for png in ("outputs/edit/edit_seconds.png", "outputs/train_loss.png"):
        (img,) = plots["data"][png]
        assert img["type"] == "image" and (root / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    dvc("plots", "show", "--out", "plots-html")
    html = (root / "plots-html" / "index.html").read_text()
    assert "edit_seconds.png" in html and "<img" in html
