"""build-regset: the regularization set (class prior) of every concept."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from flows.concepts import concept_dirs
from tasks.regset import build_regset_task


@flow(name="build-regset")
def build_regset(concepts_root: str = "data/concepts", out_root: str = "outputs/regset",
                 params_path: str = "params.yaml") -> list[dict]:
    """Regularisation images (class prior) for every concept under `concepts_root`; -> per concept
    {out, images, downloaded, generated, failed_urls}."""
    out = [build_regset_task(str(d), str(Path(out_root) / d.name), params_path) for d in concept_dirs(concepts_root)]
    get_run_logger().info("summary: " + ("; ".join(
        f"{Path(r['out']).name}: {r['images']} images ({r['downloaded']} downloaded, {r['generated']} generated, "
        f"{r['failed_urls']} URLs failed)" for r in out) or f"no concepts under {concepts_root}"))
    return out
