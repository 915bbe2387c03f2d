"""Evaluation: metrics on edits, the DreamBench protocol in edit mode, ablations, the report."""


def evaluate_edits(results_table, out_dir, cfg, models) -> dict:
    """The evaluate stage's entry point (lcd.jobs.stages names it): see lcd.evaluate.batch."""
    from lcd.evaluate.batch import evaluate_edits as _run

    return _run(results_table, out_dir, cfg, models)
