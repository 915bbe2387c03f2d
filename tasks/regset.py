"""Regset stage task: the regularization set of one concept (lcd.jobs.regsets)."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from lcd.config import load_params
from lcd.jobs.regsets import concept_regset


@task(cache_policy=NO_CACHE)
def build_regset_task(concept_dir: str, out_dir: str, params_path: str) -> dict:
    """-> {out, images, downloaded, generated, failed_urls} of one concept's set."""
    params = load_params(params_path)
    r = concept_regset(Path(concept_dir), Path(out_dir), params.regset, params.models, params.io)
    return {"out": out_dir, "images": r.downloaded + r.generated + r.generated_cached, "downloaded": r.downloaded,
            "generated": r.generated + r.generated_cached, "failed_urls": r.failed}
