"""The demo leaves a fresh clone clean: `scripts/demo.sh` (its own Prefect server and `gpu` worker,
`prefect deploy --all`, the lcd-pipeline deployment on the samples with the tiny models) run in a
copy of the checkout as `git clone` gives it, then `git status --porcelain` is empty: every file
it wrote (models, data, outputs, the server's home) is ignored, and the tracked `metrics.json` is
untouched; the pipeline's metrics are in `outputs/evaluate/metrics.json`. Only the DVC stage
writes `metrics.json` (tests/flows/test_first_hour.py holds `dvc repro` to that).

The wiring is checked quickly too: the evaluate flow's `metrics_path` defaults to none (its out_dir
alone; tests/tasks/test_evaluate_artifacts.py runs the task so), the pipeline passes none, and only
dvc.yaml's command names the declared metrics file."""

from __future__ import annotations

import ast
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.flows.conftest import _free_port
from tests.flows.test_first_hour import _fresh_copy, git_status

REPO = Path(__file__).resolve().parents[2]


def _demo_env(root: Path, home: Path) -> dict[str, str]:
    """A user's shell: no PREFECT_* of the suite's server, no PYTHONPATH to this checkout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k != "PYTHONPATH"}
    return env | {"HOME": str(home), "LCD_PYTHON": str(root / ".venv" / "bin" / "python"),
                  "LCD_PREFECT_PORT": str(_free_port()), "PREFECT_WORKER_QUERY_SECONDS": "1"}


@pytest.mark.server
@pytest.mark.slow
def test_demo_pipeline_run_leaves_a_fresh_clone_clean(tmp_path):
    root = tmp_path / "clone"
    _fresh_copy(root)
    # a committed sentinel, so that any rewrite shows (tiny models could reproduce the file's bytes)
    tracked_metrics = b'{"sentinel": {"n": 0}}\n'
    (root / "metrics.json").write_bytes(tracked_metrics)
    subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qam", "sentinel"], cwd=root,
                   check=True, capture_output=True)
    assert git_status(root) == []
    home = tmp_path / "home"
    home.mkdir()
    env = _demo_env(root, home)
    try:
        proc = subprocess.run(["bash", "scripts/demo.sh"], cwd=root, env=env, capture_output=True, text=True,
                              timeout=900)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out[-4000:]
        assert "Completed" in out, out[-3000:]  # the lcd-pipeline flow run finished, watched by the script
    finally:
        stop = subprocess.run(["bash", "scripts/demo.sh", "stop"], cwd=root, env=env, capture_output=True,
                              text=True, timeout=120)
    assert stop.returncode == 0, stop.stderr[-2000:]
    # the demo did its work: every stage's outputs, metrics included, under the ignored outputs/
    metrics = json.loads((root / "outputs/evaluate/metrics.json").read_text())
    assert metrics and all("clip_t" in m for m in metrics.values()), metrics
    summary = json.loads((root / "outputs/edit/summary.json").read_text())
    assert summary["items"] == 5 and summary["edited"] >= 1, summary
    for rel in ("models/tiny/sd/model_index.json", "outputs/concepts", "outputs/masks", "outputs/regset", ".prefect"):
        assert (root / rel).exists(), f"{rel} missing after the demo"
    # ... and nothing else: no tracked file changed, no untracked file that is not ignored
    assert git_status(root) == [], f"the demo left the clone dirty: {git_status(root)}"
    assert (root / "metrics.json").read_bytes() == tracked_metrics


@pytest.mark.slow
def test_lcd_demo_leaves_a_fresh_clone_clean(tmp_path):
    """`lcd demo` (tiny models written if missing, the bundled edits) writes only ignored files."""
    root = tmp_path / "clone"
    _fresh_copy(root)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k != "PYTHONPATH"}
    proc = subprocess.run([str(root / ".venv" / "bin" / "python"), "-m", "lcd", "demo"], cwd=root,
                          env=env | {"HOME": str(tmp_path)}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert len(list((root / "outputs/demo").glob("*.png"))) == 3, proc.stdout
    assert git_status(root) == [], f"`lcd demo` left the clone dirty: {git_status(root)}"


def test_evaluate_without_metrics_path_writes_into_its_out_dir_only():
    """The flows' defaults: `evaluate` (and its deployment) has no metrics_path, so nothing outside
    out_dir; the pipeline passes none; `python -m flows evaluate` (dvc.yaml's command) passes
    "metrics.json", the file dvc.yaml declares as its metric."""
    import inspect

    import yaml

    from flows.evaluate import evaluate

    assert inspect.signature(evaluate.fn).parameters["metrics_path"].default is None

    def evaluate_calls(path: str) -> list[ast.Call]:
        tree = ast.parse((REPO / path).read_text())
        return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "evaluate"]

    (in_pipeline,) = evaluate_calls("flows/pipeline.py")
    third = in_pipeline.args[2] if len(in_pipeline.args) > 2 else next(
        (k.value for k in in_pipeline.keywords if k.arg == "metrics_path"), ast.Constant(None))
    assert isinstance(third, ast.Constant) and third.value is None, ast.unparse(in_pipeline)
    (in_main,) = evaluate_calls("flows/__main__.py")
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["evaluate"]
    declared = [next(iter(m)) if isinstance(m, dict) else m for m in stage["metrics"]]
    assert stage["cmd"].startswith("python -m flows evaluate")
    assert ast.literal_eval(in_main.args[2]) in declared, ast.unparse(in_main)

