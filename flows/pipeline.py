"""lcd-pipeline: the parent flow, regset -> train -> masks -> edit -> evaluate, as subflows.

`stages` picks a subset. A stage whose library is not installed fails the run before anything
starts, naming the module; `skip_unavailable=True` runs the installed stages and reports the rest
(the embedded demo uses it while a library is still missing).
"""

from __future__ import annotations

from typing import Literal

from prefect import flow, get_run_logger

from lcd.config import EditConfig
from lcd.jobs.stages import STAGES, require_stage, stage_available
from flows.edit_batch import edit_batch
from flows.stages import build_regset, evaluate, precompute_masks, train_concept


@flow(name="lcd-pipeline", log_prints=True)
def pipeline(
    manifest: str = "data/manifests/edits.jsonl",
    data_root: str = "data",
    out_root: str = "outputs",
    params_path: str = "params.yaml",
    stages: list[str] | None = None,
    skip_unavailable: bool = False,
    num_shards: int = 1,
    fan_out: Literal["deployment", "inline"] = "inline",
    edit: EditConfig | None = None,
) -> dict:
    """Run the chosen stages in order; -> {stage: summary | "not installed"}."""
    log = get_run_logger()
    chosen = [s for s in STAGES if stages is None or s in stages]
    # 1. check every stage's library before any work
    missing = [s for s in chosen if not stage_available(s)]
    if missing and not skip_unavailable:
        for s in missing:
            require_stage(s)  # raises, naming the module
    report: dict = {s: "not installed" for s in missing}
    run = [s for s in chosen if s not in missing]
    log.info(f"pipeline stages: running {run}, not installed {missing}")
    # 2. the stages, in DVC's order
    if "regset" in run:
        report["regset"] = build_regset(f"{data_root}/concepts", f"{out_root}/regset", params_path)
    if "train" in run:
        report["train"] = train_concept(f"{data_root}/concepts", f"{out_root}/concepts",
                                        f"{out_root}/regset" if "regset" in run else None, params_path,
                                        loss_csv=f"{out_root}/train_loss.csv")
    if "masks" in run:
        report["masks"] = precompute_masks(f"{data_root}/scenes", f"{out_root}/masks", params_path)
    if "edit" in run:
        report["edit"] = edit_batch(manifest, f"{out_root}/edit", params_path, num_shards=num_shards,
                                    fan_out=fan_out, concepts_root=f"{out_root}/concepts",
                                    masks_store=f"{out_root}/masks", edit=edit)
    if "evaluate" in run:
        report["evaluate"] = evaluate(f"{out_root}/edit/results.parquet", f"{out_root}/evaluate",
                                      "metrics.json", params_path, photos_root=f"{data_root}/concepts")
    return report
