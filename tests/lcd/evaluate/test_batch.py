"""The evaluate stage's library function on an edit-stage results table (Parquet)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lcd.config import ModelsConfig
from lcd.errors import LcdError
from lcd.evaluate.batch import evaluate_edits
from lcd.evaluate.config import EvaluateConfig
from lcd.evaluate.scoring import clip_t_text

SAMPLES = Path(__file__).resolve().parents[3] / "samples"


def test_clip_t_text_replaces_the_token():
    assert clip_t_text("a [P] dog on the beach", "dog") == "a dog on the beach"
    assert clip_t_text("photo of [P] on a sofa", "dog") == "photo of dog on a sofa"
    assert clip_t_text("a [P] dog on the beach", None) == "a dog on the beach"


def test_evaluate_edits_reads_results_table(tiny_dir, tmp_path):
    scene, mask = str(SAMPLES / "scenes/cat_00.jpg"), str(SAMPLES / "masks/cat_00.png")
    rows = [
        {"image": scene, "region": mask, "concept": str(SAMPLES / "concepts/dog"), "prompt": "a [P] dog",
         "output": scene, "status": "skipped"},  # an untouched output: perfect background
        {"image": scene, "region": mask, "concept": str(tmp_path / "nophotos"), "prompt": "a [P] dog",
         "output": scene, "status": "edited"},
        {"image": scene, "region": mask, "concept": "x", "prompt": "p", "output": "o", "status": "failed"},
    ]
    (tmp_path / "nophotos").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "results.parquet")
    cfg = EvaluateConfig(dino=str(tiny_dir / "dino"))
    metrics = evaluate_edits(tmp_path / "results.parquet", tmp_path / "out", cfg, ModelsConfig(clip=str(tiny_dir / "clip")))
    assert list(metrics) == ["dog"] and metrics["dog"]["n"] == 1 and metrics["dog"]["bg_psnr"] == "inf"
    json.dumps(metrics, allow_nan=False)
    fails = json.loads((tmp_path / "out/failures.json").read_text())
    assert len(fails) == 1 and "concept folder has no photos" in fails[0]["error"]
    assert (tmp_path / "out/report.html").exists() and (tmp_path / "out/metrics.json").exists()
    with pytest.raises(LcdError, match="edit results table not found"):
        evaluate_edits(tmp_path / "none.parquet", tmp_path / "out", cfg, ModelsConfig())
