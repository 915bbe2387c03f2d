"""Stage flows: build-regset, train-concept, precompute-masks, evaluate (edit-batch has its own module)."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from tasks.stages import (
    build_regset_task, collect_loss_curves, evaluate_task, precompute_masks_task, train_concept_task,
)


def _concept_dirs(concepts_root: str) -> list[Path]:
    return sorted(p for p in Path(concepts_root).iterdir() if p.is_dir() and not p.name.startswith("."))


@flow(name="build-regset")
def build_regset(concepts_root: str = "data/concepts", out_root: str = "outputs/regset",
                 params_path: str = "params.yaml") -> list[str]:
    """Regularisation images (class prior) for every concept under `concepts_root`."""
    return [build_regset_task(str(d), str(Path(out_root) / d.name), params_path) for d in _concept_dirs(concepts_root)]


@flow(name="train-concept")
def train_concept(concepts_root: str = "data/concepts", out_root: str = "outputs/concepts",
                  regset_root: str | None = "outputs/regset", params_path: str = "params.yaml",
                  concepts: list[str] | None = None, loss_csv: str = "outputs/train_loss.csv") -> list[str]:
    """Train every concept (or the named ones) into `<out_root>/<name>`; loss curves -> `loss_csv`."""
    dirs = [d for d in _concept_dirs(concepts_root) if concepts is None or d.name in concepts]
    out = [train_concept_task(str(d), str(Path(out_root) / d.name), params_path,
                              str(Path(regset_root) / d.name) if regset_root else None) for d in dirs]
    collect_loss_curves(out_root, [d.name for d in dirs], loss_csv)  # loss curves for `dvc plots`
    return out


@flow(name="precompute-masks")
def precompute_masks(images_dir: str = "data/scenes", out_path: str = "outputs/masks",
                     params_path: str = "params.yaml") -> str:
    """SAM masks of every scene, stored as RLE Parquet under `out_path` (lcd.masks.store layout)."""
    return precompute_masks_task(images_dir, out_path, params_path)


@flow(name="evaluate")
def evaluate(results_table: str = "outputs/edit/results.parquet", out_dir: str = "outputs/evaluate",
             metrics_path: str = "metrics.json", params_path: str = "params.yaml",
             photos_root: str = "data/concepts") -> dict:
    """Metrics of the concept edits (identity vs the concept's photos, prompt alignment,
    preservation outside the mask) -> metrics.json."""
    return evaluate_task(results_table, out_dir, metrics_path, params_path, photos_root)
