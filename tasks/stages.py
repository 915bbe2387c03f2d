"""Tasks of the stages whose library lands on other branches: regset, train, masks, evaluate.

Each calls the function `lcd.jobs.stages.STAGE_FUNCTIONS` names for it; a missing module fails
the task at once with a message naming it. Section configs come from params.yaml (`Params.<stage>`).
"""

from __future__ import annotations

import json
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from lcd.config import load_params
from lcd.errors import LcdError
from lcd.jobs.stages import STAGE_FUNCTIONS, require_stage


def _stage(stage: str, params_path: str):
    """-> (library function, the stage's config section, models config)."""
    fn = getattr(require_stage(stage), STAGE_FUNCTIONS[stage][1])
    params = load_params(params_path)
    if not hasattr(params, stage):
        raise LcdError(f"params.yaml has no '{stage}' section (Params.{stage}); the {stage} stage needs it",
                       item=f"{params_path}:{stage}")
    return fn, getattr(params, stage), params.models


@task(cache_policy=NO_CACHE)
def build_regset_task(concept_dir: str, out_dir: str, params_path: str) -> str:
    fn, cfg, models = _stage("regset", params_path)
    return str(fn(Path(concept_dir), Path(out_dir), cfg, models))


@task(cache_policy=NO_CACHE)
def train_concept_task(photos_dir: str, out_dir: str, params_path: str, regset_dir: str | None = None) -> str:
    fn, cfg, models = _stage("train", params_path)
    return str(fn(Path(photos_dir), Path(out_dir), cfg, models, regset_dir=Path(regset_dir) if regset_dir else None))


@task(cache_policy=NO_CACHE)
def precompute_masks_task(images_dir: str, out_path: str, params_path: str) -> str:
    fn, cfg, models = _stage("masks", params_path)
    images = sorted(p for p in Path(images_dir).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    return str(fn(images, Path(out_path), cfg, models))


@task(cache_policy=NO_CACHE)
def evaluate_task(results_table: str, out_dir: str, metrics_path: str, params_path: str) -> dict:
    fn, cfg, models = _stage("evaluate", params_path)
    metrics = dict(fn(Path(results_table), Path(out_dir), cfg, models))
    from lcd.io.atomic import write_text_atomic

    write_text_atomic(metrics_path, json.dumps(metrics, indent=1, sort_keys=True))
    return metrics


@task(cache_policy=NO_CACHE)
def collect_loss_curves(out_root: str, names: list[str]) -> str:
    """`<out_root>/<name>/loss.csv` (step,loss, written by lcd.train) -> one `<out_root>/loss.csv`
    (concept,step,loss) for `dvc plots`. Concepts without a curve are left out."""
    from lcd.io.atomic import write_text_atomic

    rows = ["concept,step,loss\n"]
    for name in names:
        f = Path(out_root) / name / "loss.csv"
        if f.exists():
            rows += [f"{name},{line}\n" for line in f.read_text().splitlines()[1:] if line.strip()]
    return str(write_text_atomic(Path(out_root) / "loss.csv", "".join(rows)))
