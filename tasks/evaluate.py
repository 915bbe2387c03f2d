"""Evaluate stage tasks: metrics of the edits (lcd.evaluate.batch) and their Prefect artifacts."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from lcd.config import load_params
from lcd.evaluate.batch import evaluate_edits
from lcd.io.atomic import write_text_atomic
from lcd.jobs.evaluation import evaluation_table


@task(cache_policy=NO_CACHE)
def evaluate_task(results_table: str, out_dir: str, metrics_path: str | None, params_path: str,
                  photos_root: str) -> dict:
    """Score the edits into out_dir (its metrics.json included); `metrics_path`, when given, gets
    the same table too: the DVC stage's tracked `metrics.json`, which no other run may touch."""
    params = load_params(params_path)
    scored = Path(out_dir) / "scored_results.parquet"
    evaluation_table(results_table, photos_root, scored)
    metrics = dict(evaluate_edits(scored, Path(out_dir), params.evaluate, params.models))
    if metrics_path:
        write_text_atomic(metrics_path, json.dumps(metrics, indent=1, sort_keys=True))
    publish_evaluation(metrics, Path(out_dir) / "report.html")
    return metrics


def publish_evaluation(metrics: dict, report: Path, key: str = "evaluation") -> list:
    """The metric table ({method: {metric: value}}) as a Prefect table artifact `<key>-metrics`
    and the report's path as a markdown artifact `<key>-report`, so the UI shows the numbers
    beside the run. Non-finite values ("inf") are already strings in `metrics`. -> artifact ids."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    rows = [{"method": m} | dict(v) for m, v in sorted(metrics.items())]
    ids = [create_table_artifact(table=rows, key=f"{key}-metrics", description="Per-method metric means")]
    ids.append(create_markdown_artifact(
        markdown=f"# Evaluation report\n\nHTML: `{Path(report).resolve()}`\n\nPNG: `{Path(report).resolve().with_suffix('.png')}`\n",
        key=f"{key}-report", description="Where the evaluation report is"))
    return ids
