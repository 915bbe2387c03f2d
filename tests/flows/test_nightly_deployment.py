"""nightly-concepts/nightly through the server and a process worker: run twice, train once;
a changed photo retrains that concept only."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.server, pytest.mark.slow]
SAMPLES = Path(__file__).resolve().parents[2] / "samples"


def test_nightly_running_twice_trains_once(prefect_server, worker, tiny_dir, tmp_path):
    pytest.importorskip("lcd.train")
    photos, weights = tmp_path / "concepts", tmp_path / "weights"
    shutil.copytree(SAMPLES / "concepts" / "dog", photos / "dog")
    params = yaml.safe_load((SAMPLES.parent / "params.yaml").read_text())  # the tiny-model defaults
    params["models"] = {"sd": str(tiny_dir / "sd")}
    params["train"].update(steps=2)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))

    def run_nightly():
        res = prefect_server.cli("deployment", "run", "nightly-concepts/nightly", "-p", f"concepts_root={photos}",
                                 "-p", f"weights_root={weights}", "-p", "regset_root=null",
                                 "-p", f"params_path={tmp_path / 'params.yaml'}", "--watch", "--watch-interval", "1",
                                 check=False)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        return prefect_server.cli("artifact", "inspect", "nightly-concepts").stdout

    first = run_nightly()
    weights_file = weights / "dog" / "concept.safetensors"
    assert weights_file.exists() and "trained" in first
    stamp = weights_file.stat().st_mtime_ns
    second = run_nightly()
    assert "skipped" in second  # only the second run can have recorded "skipped"
    assert weights_file.stat().st_mtime_ns == stamp  # the second night did not retrain
