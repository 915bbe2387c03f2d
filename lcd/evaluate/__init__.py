"""Evaluation: metrics on edits, the DreamBench protocol in edit mode, ablations, the report."""

# lcd.config imports lcd.evaluate.config (its `evaluate` section), which subclasses lcd.config's
# StrictConfig: importing lcd.config first here makes `import lcd.evaluate.config` work on its own.
import lcd.config  # noqa: F401,E402


def evaluate_edits(results_table, out_dir, cfg, models) -> dict:
    """The evaluate stage's entry point (lcd.jobs.stages names it): see lcd.evaluate.batch."""
    from lcd.evaluate.batch import evaluate_edits as _run

    return _run(results_table, out_dir, cfg, models)
