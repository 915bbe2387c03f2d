"""A model folder whose model_index.json names a module (`"unet": ["mal.sd.unet.payload", ...]`)
runs no code on any entry point: `lcd edit`, `python -m lcd edit`, `python -m flows edit` and
the edit-batch shard a Prefect deployment runs. Each is run from the folder that holds `mal/`
(as the DVC stages and the README's layout run them), with that folder on the import path too,
and each refuses in one line naming model_index.json and 'unet'; the payload's marker never
appears. The last test imports the payload the way diffusers did, and the marker does appear."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
REFUSAL = ("models/x/model_index.json: component 'unet' names library 'mal.sd.unet.payload', not diffusers or "
           "transformers (refusing to import code from a model folder)")


@pytest.fixture
def project(tiny_dir, tmp_path) -> Path:
    """proj/ holding models/x (the tiny SD, its unet entry naming mal.sd.unet.payload), mal/ (whose
    payload writes proj/PWNED when imported), an image, a mask, params.yaml and a 2-item manifest."""
    root = tmp_path / "proj"
    model = Path(shutil.copytree(tiny_dir / "sd", root / "models" / "x"))
    index = json.loads((model / "model_index.json").read_text())
    index["unet"] = ["mal.sd.unet.payload", "UNet2DConditionModel"]
    (model / "model_index.json").write_text(json.dumps(index, indent=2))
    pkg = root / "mal" / "sd" / "unet"
    pkg.mkdir(parents=True)
    for d in (root / "mal", root / "mal" / "sd", pkg):
        (d / "__init__.py").write_text("")
    (pkg / "payload.py").write_text("from pathlib import Path\n"
                                    "Path(__file__).resolve().parents[3].joinpath('PWNED').write_text('code ran')\n"
                                    "from diffusers import UNet2DConditionModel\n")
    Image.fromarray(np.full((64, 64, 3), 120, np.uint8)).save(root / "a.png")
    Image.fromarray(np.full((64, 64), 255, np.uint8)).save(root / "m.png")
    (root / "params.yaml").write_text(yaml.safe_dump({"models": {"sd": "models/x"},
                                                      "edit": {"size": 64, "steps": 1}}))
    items = [{"id": f"i{k}", "image": "a.png", "mask": "m.png", "prompt": "a dog", "seed": k} for k in range(2)]
    (root / "edits.jsonl").write_text("\n".join(json.dumps(x) for x in items) + "\n")
    return root


def _env(root: Path) -> dict:
    """The project folder on the import path of every entry point (the console script's own
    sys.path[0] is .venv/bin), so the payload is importable wherever diffusers would import it."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(REPO), os.environ.get("PYTHONPATH", "")])}


EDIT = ["edit", "--image", "a.png", "--mask", "m.png", "--prompt", "a dog", "--out", "o.png", "--model", "models/x"]
ENTRY_POINTS = {
    "lcd": lambda: [str(Path(sys.executable).parent / "lcd"), *EDIT],
    "python -m lcd": lambda: [sys.executable, "-m", "lcd", *EDIT],
    "python -m flows": lambda: [sys.executable, "-m", "flows", "edit", "--params", "params.yaml",
                                "--manifest", "edits.jsonl", "--out", "outputs"],
}


@pytest.mark.slow
@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_no_entry_point_runs_the_folders_code(project, entry):
    r = subprocess.run(ENTRY_POINTS[entry](), cwd=project, env=_env(project), capture_output=True, text=True,
                       timeout=300)
    err = r.stderr.strip()
    assert not (project / "PWNED").exists(), f"{entry} imported mal.sd.unet.payload"
    assert r.returncode == 2, (r.returncode, err)
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.endswith(REFUSAL), err
    assert not (project / "o.png").exists() and not (project / "outputs").exists()  # nothing started


def test_the_deployment_shard_fails_its_items_and_runs_no_code(project, monkeypatch):
    """edit-batch's shard body, as a `gpu` worker runs it from the project folder: both items are
    failure rows carrying the one-line refusal; the payload is never imported."""
    from tasks.edit import edit_shard, merge_shard_tables, plan_manifest

    monkeypatch.chdir(project)
    monkeypatch.syspath_prepend(str(project))
    out = str(project / "outputs" / "edit")
    plan_manifest.fn("edits.jsonl", out, 1)
    counts = edit_shard.fn("edits.jsonl", out, 0, 1, "params.yaml", None, "diffusion", None)
    assert counts == {"shard": "00000-of-00001", "edited": 0, "skipped": 0, "failed": 2}
    merged = merge_shard_tables.fn(out, 1)
    assert (merged["failed"], merged["edited"], merged["n_missing"]) == (2, 0, 0)
    fails = pq.read_table(Path(out) / "failures.parquet").to_pylist()
    assert sorted(f["id"] for f in fails) == ["i0", "i1"]
    assert all(f["message"] == REFUSAL and f["error"] == "ModelLoadError" for f in fails), fails
    assert not (project / "PWNED").exists() and "mal.sd.unet.payload" not in sys.modules


def test_the_payload_is_live(project):
    """Control: the folder's module is importable from there and writes the marker, so the tests
    above would see it had any entry point imported it."""
    subprocess.run([sys.executable, "-c", "import mal.sd.unet.payload"], cwd=project, env=_env(project),
                   check=True, timeout=120)
    assert (project / "PWNED").read_text() == "code ran"
