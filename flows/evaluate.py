"""evaluate: metrics of the concept edits -> metrics.json, the report and Prefect artifacts."""

from __future__ import annotations

from prefect import flow, get_run_logger

from tasks.evaluate import evaluate_task


@flow(name="evaluate")
def evaluate(results_table: str = "outputs/edit/results.parquet", out_dir: str = "outputs/evaluate",
             metrics_path: str = "metrics.json", params_path: str = "params.yaml",
             photos_root: str = "data/concepts") -> dict:
    """Metrics of the concept edits (identity vs the concept's photos, prompt alignment,
    preservation outside the mask) -> metrics.json."""
    metrics = evaluate_task(results_table, out_dir, metrics_path, params_path, photos_root)
    get_run_logger().info("summary: " + ("; ".join(
        f"{method}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in sorted(m.items()))
        for method, m in sorted(metrics.items())) or "nothing scored") + f" -> {metrics_path}, {out_dir}/report.html")
    return metrics
