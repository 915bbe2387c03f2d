"""evaluate: metrics of the concept edits -> out_dir/metrics.json, the report and Prefect artifacts.

The repository's tracked `metrics.json` is DVC's: only the DVC stage (`python -m flows evaluate`)
writes it, so a deployment or pipeline run leaves a checkout's tracked files as they were."""

from __future__ import annotations

from prefect import flow, get_run_logger

from tasks.evaluate import evaluate_task


@flow(name="evaluate")
def evaluate(results_table: str = "outputs/edit/results.parquet", out_dir: str = "outputs/evaluate",
             metrics_path: str | None = None, params_path: str = "params.yaml",
             photos_root: str = "data/concepts") -> dict:
    """Metrics of the concept edits (identity vs the concept's photos, prompt alignment,
    preservation outside the mask) -> out_dir/metrics.json, and `metrics_path` too when given."""
    metrics = evaluate_task(results_table, out_dir, metrics_path, params_path, photos_root)
    written = ", ".join(dict.fromkeys(p for p in (f"{out_dir}/metrics.json", metrics_path) if p))
    get_run_logger().info("summary: " + ("; ".join(
        f"{method}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in sorted(m.items()))
        for method, m in sorted(metrics.items())) or "nothing scored") + f" -> {written}, {out_dir}/report.html")
    return metrics
