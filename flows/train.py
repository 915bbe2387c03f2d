"""train-concept: fine-tune every concept (or the named ones) and collect the loss curves."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from flows.concepts import concept_dirs
from tasks.train import collect_loss_curves, train_concept_task


@flow(name="train-concept")
def train_concept(concepts_root: str = "data/concepts", out_root: str = "outputs/concepts",
                  regset_root: str | None = "outputs/regset", params_path: str = "params.yaml",
                  concepts: list[str] | None = None, loss_csv: str = "outputs/train_loss.csv") -> list[str]:
    """Train every concept (or the named ones) into `<out_root>/<name>`; loss curves -> `loss_csv`."""
    dirs = [d for d in concept_dirs(concepts_root) if concepts is None or d.name in concepts]
    out = [train_concept_task(str(d), str(Path(out_root) / d.name), params_path,
                              str(Path(regset_root) / d.name) if regset_root else None) for d in dirs]
    collect_loss_curves(out_root, [d.name for d in dirs], loss_csv)  # loss curves for `dvc plots`
    get_run_logger().info(f"summary: {len(out)} concept(s) trained ({', '.join(d.name for d in dirs) or 'none'}) "
                          f"-> {out_root}; loss curves in {loss_csv}")
    return out
