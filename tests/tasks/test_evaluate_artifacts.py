"""The evaluate task publishes its metric table and report location as Prefect artifacts
(read back from a real temporary Prefect API)."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow  # starts a temporary Prefect server


def test_publish_evaluation_reads_back(tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.testing.utilities import prefect_test_harness

    from tasks.stages import publish_evaluation

    metrics = {"lcd": {"clip_t": 0.31, "bg_psnr": "inf"}, "sd-inpaint": {"clip_t": 0.25, "bg_psnr": 21.5}}
    with prefect_test_harness():
        publish_evaluation(metrics, tmp_path / "report.html", key="evaluation")
        import asyncio

        async def read(key):
            async with get_client() as c:
                return await c.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))

        table = asyncio.run(read("evaluation-metrics"))
        report = asyncio.run(read("evaluation-report"))
    assert len(table) == 1 and table[0].type == "table"
    data = table[0].data if isinstance(table[0].data, list) else json.loads(table[0].data)
    assert {r["method"]: r["clip_t"] for r in data} == {"lcd": 0.31, "sd-inpaint": 0.25}
    assert [r["bg_psnr"] for r in data if r["method"] == "lcd"] == ["inf"]
    assert report[0].type == "markdown" and str((tmp_path / "report.html").resolve()) in report[0].data
