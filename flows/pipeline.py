"""lcd-pipeline: the parent flow, regset -> train -> masks -> edit -> evaluate, as subflows.

`stages` picks a subset (DVC's order is kept whatever order they are given in).
"""

from __future__ import annotations

from typing import Literal

STAGES = ("regset", "train", "masks", "edit", "evaluate")  # dvc.yaml's order

from prefect import flow, get_run_logger

from lcd.config import EditConfig
from flows.edit_batch import edit_batch
from flows.evaluate import evaluate
from flows.masks import precompute_masks
from flows.regset import build_regset
from flows.train import train_concept


@flow(name="lcd-pipeline", log_prints=True)
def pipeline(
    manifest: str = "data/manifests/edits.jsonl",
    data_root: str = "data",
    out_root: str = "outputs",
    params_path: str = "params.yaml",
    stages: list[str] | None = None,
    num_shards: int = 1,
    fan_out: Literal["deployment", "inline"] = "inline",
    edit: EditConfig | None = None,
) -> dict:
    """Run the chosen stages in DVC's order; -> {stage: summary}."""
    unknown = sorted(set(stages or ()) - set(STAGES))
    if unknown:
        raise ValueError(f"stages: unknown stage(s) {unknown}; choose from {list(STAGES)}")
    run = [s for s in STAGES if stages is None or s in stages]
    get_run_logger().info(f"pipeline stages: {run}")
    report: dict = {}
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
        # metrics to out_root/evaluate/metrics.json only: the tracked metrics.json is the DVC stage's
        report["evaluate"] = evaluate(f"{out_root}/edit/results.parquet", f"{out_root}/evaluate",
                                      None, params_path, photos_root=f"{data_root}/concepts")
    get_run_logger().info(f"summary: stages {', '.join(run)} done -> {out_root}"
                          + (f"; edit {report['edit']}" if "edit" in report else ""))
    return report
