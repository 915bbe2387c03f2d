"""Tasks of the regset, train, masks and evaluate stages: each reads params.yaml, calls its lcd.jobs
function with the stage's config section, and returns a path or a small summary."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from lcd.config import load_params
from lcd.evaluate.batch import evaluate_edits
from lcd.io.atomic import write_text_atomic
from lcd.io.images import image_files
from lcd.jobs.evaluation import evaluation_table
from lcd.jobs.masking import precompute_masks
from lcd.jobs.regsets import build_concept_regset
from lcd.jobs.training import train_concept


@task(cache_policy=NO_CACHE)
def build_regset_task(concept_dir: str, out_dir: str, params_path: str) -> str:
    params = load_params(params_path)
    return str(build_concept_regset(Path(concept_dir), Path(out_dir), params.regset, params.models))


@task(cache_policy=NO_CACHE)
def train_concept_task(photos_dir: str, out_dir: str, params_path: str, regset_dir: str | None = None) -> str:
    params = load_params(params_path)
    return str(train_concept(Path(photos_dir), Path(out_dir), params.train, params.models, regset_dir=regset_dir))


@task(cache_policy=NO_CACHE)
def precompute_masks_task(images_dir: str, out_path: str, params_path: str) -> str:
    params = load_params(params_path)
    return str(precompute_masks(image_files(images_dir), Path(out_path), params.masks, params.models))


@task(cache_policy=NO_CACHE)
def evaluate_task(results_table: str, out_dir: str, metrics_path: str, params_path: str, photos_root: str) -> dict:
    params = load_params(params_path)
    scored = Path(out_dir) / "scored_results.parquet"
    evaluation_table(results_table, photos_root, scored)
    metrics = dict(evaluate_edits(scored, Path(out_dir), params.evaluate, params.models))
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


@task(cache_policy=NO_CACHE)
def collect_loss_curves(out_root: str, names: list[str], dest: str) -> str:
    """`<out_root>/<name>/training/losses.csv` (step,loss,..., written by lcd.train) -> one
    `dest` CSV (concept,step,loss) for `dvc plots`. Concepts without a curve are left out."""
    rows = ["concept,step,loss\n"]
    for name in names:
        f = Path(out_root) / name / "training" / "losses.csv"
        if f.exists():
            lines = f.read_text().splitlines()
            cols = lines[0].split(",")
            i_step, i_loss = cols.index("step"), cols.index("loss")
            rows += [f"{name},{v[i_step]},{v[i_loss]}\n" for v in (x.split(",") for x in lines[1:] if x.strip())]
    return str(write_text_atomic(dest, "".join(rows)))
