"""build-regset: the regularization set (class prior) of every concept."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from flows.concepts import concept_dirs
from tasks.regset import build_regset_task


@flow(name="build-regset")
def build_regset(concepts_root: str = "data/concepts", out_root: str = "outputs/regset",
                 params_path: str = "params.yaml") -> list[str]:
    """Regularisation images (class prior) for every concept under `concepts_root`."""
    return [build_regset_task(str(d), str(Path(out_root) / d.name), params_path) for d in concept_dirs(concepts_root)]
