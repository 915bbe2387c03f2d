"""nightly-concepts: every night (02:00, prefect.yaml), train the concepts whose photos, training
config or base model changed since their last trained version; skip the rest.

Change detection is lcd.jobs.fingerprint (pure, tested on its own); this flow wires it to the
train task. The fingerprint is recorded only after training succeeded, so a crashed night is
retried the next night and a finished one is not repeated.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from lcd.config import load_params
from lcd.jobs.hashes import model_pin
from lcd.jobs.fingerprint import ConceptPlan, plan_concepts, train_stale
from tasks.train import train_concept_task


@task(cache_policy=NO_CACHE)
def plan_concepts_task(concepts_root: str, weights_root: str, params_path: str) -> list[ConceptPlan]:
    params = load_params(params_path)
    config = params.train.model_dump()
    m = params.models
    return plan_concepts(concepts_root, weights_root, config, model_pin(m.sd, m.sd_revision, m.variant))


@flow(name="nightly-concepts", log_prints=True)
def nightly_concepts(concepts_root: str = "data/concepts", weights_root: str = "outputs/concepts",
                     regset_root: str | None = "outputs/regset", params_path: str = "params.yaml") -> dict[str, str]:
    """-> {concept: "trained" | "skipped" | "failed: ..."}; fails the run if any concept failed."""
    plans = plan_concepts_task(concepts_root, weights_root, params_path)

    def train(plan: ConceptPlan) -> None:
        regset = f"{regset_root}/{plan.name}" if regset_root else None  # photos and weights: folders or URLs
        train_concept_task(str(plan.photos_dir), str(plan.weights_dir), params_path, regset)

    outcome = train_stale(plans, train)
    create_table_artifact([{"concept": k, "outcome": v} for k, v in outcome.items()], key="nightly-concepts")
    get_run_logger().info(f"nightly concepts: {outcome}")
    failed = {k: v for k, v in outcome.items() if v.startswith("failed")}
    if failed:
        raise RuntimeError(f"{len(failed)} concept(s) failed to train: {failed}")
    return outcome
