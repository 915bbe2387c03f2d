"""Evaluation: metrics on edits, the DreamBench protocol in edit mode, ablations, the report."""

# lcd.config imports lcd.evaluate.config (its `evaluate` section), which subclasses lcd.config's
# StrictConfig: importing lcd.config first here makes `import lcd.evaluate.config` work on its own.
import lcd.config  # noqa: F401,E402
