"""The evaluate task publishes its metric table and report location as Prefect artifacts
(read back from a real temporary Prefect API)."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow  # starts a temporary Prefect server (once for the module)


@pytest.fixture(scope="module")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):  # 2 busy CI cores
        yield


def test_publish_evaluation_reads_back(harness, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from tasks.evaluate import publish_evaluation

    metrics = {"lcd": {"clip_t": 0.31, "bg_psnr": "inf"}, "sd-inpaint": {"clip_t": 0.25, "bg_psnr": 21.5}}
    if True:
        publish_evaluation(metrics, tmp_path / "report.html", key="unit")
        import asyncio

        async def read(key):
            async with get_client() as c:
                return await c.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))

        table = asyncio.run(read("unit-metrics"))
        report = asyncio.run(read("unit-report"))
    assert len(table) == 1 and table[0].type == "table"
    data = table[0].data if isinstance(table[0].data, list) else json.loads(table[0].data)
    assert {r["method"]: r["clip_t"] for r in data} == {"lcd": 0.31, "sd-inpaint": 0.25}
    assert [r["bg_psnr"] for r in data if r["method"] == "lcd"] == ["inf"]
    assert report[0].type == "markdown" and str((tmp_path / "report.html").resolve()) in report[0].data


def test_evaluate_task_fn_publishes_artifacts(harness, tiny_dir, tmp_path):
    """evaluate_task.fn() on a one-row results table: metrics.json and the same table as an artifact."""
    import asyncio

    import yaml
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from lcd.jobs import tables
    from tasks.evaluate import evaluate_task

    samples = __import__("pathlib").Path(__file__).resolve().parents[2] / "samples"
    scene, mask = str(samples / "scenes/cat_00.jpg"), str(samples / "masks/cat_00.png")
    tables.write_table(tmp_path / "results.parquet", [
        {"id": "a", "image": scene, "region": mask, "concept": "dog", "prompt": "a [P] dog", "seed": 0,
         "output": scene, "input_hash": "h", "status": "skipped", "shard": "0", "seconds": 0.0}], tables.RESULTS_SCHEMA)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"models": {"clip": str(tiny_dir / "clip")},
                                      "evaluate": {"dino": str(tiny_dir / "dino")}}))
    if True:
        metrics = evaluate_task.fn(str(tmp_path / "results.parquet"), str(tmp_path / "out"),
                                   str(tmp_path / "metrics.json"), str(params), str(samples / "concepts"))

        async def read():
            async with get_client() as c:
                return await c.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["evaluation-metrics"])))

        art = asyncio.run(read())
    data = art[0].data if isinstance(art[0].data, list) else json.loads(art[0].data)
    assert metrics["dog"]["n"] == 1 and data == [{"method": "dog"} | metrics["dog"]]
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics


def test_evaluate_task_fn_without_metrics_path_writes_into_out_dir_only(harness, tiny_dir, tmp_path, monkeypatch):
    """metrics_path None (the pipeline and the evaluate deployment): the metrics land in
    out_dir/metrics.json and nowhere else, not in the working directory (a checkout's tracked
    metrics.json is the DVC stage's)."""
    import yaml
    from lcd.jobs import tables
    from tasks.evaluate import evaluate_task

    samples = __import__("pathlib").Path(__file__).resolve().parents[2] / "samples"
    scene, mask = str(samples / "scenes/cat_00.jpg"), str(samples / "masks/cat_00.png")
    tables.write_table(tmp_path / "results.parquet", [
        {"id": "a", "image": scene, "region": mask, "concept": "dog", "prompt": "a [P] dog", "seed": 0,
         "output": scene, "input_hash": "h", "status": "skipped", "shard": "0", "seconds": 0.0}], tables.RESULTS_SCHEMA)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"models": {"clip": str(tiny_dir / "clip")},
                                      "evaluate": {"dino": str(tiny_dir / "dino")}}))
    cwd = tmp_path / "checkout"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    metrics = evaluate_task.fn(str(tmp_path / "results.parquet"), str(tmp_path / "out"), None, str(params),
                               str(samples / "concepts"))
    assert metrics["dog"]["n"] == 1
    assert json.loads((tmp_path / "out" / "metrics.json").read_text()) == metrics
    assert list(cwd.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkout", "out", "params.yaml", "results.parquet"]
