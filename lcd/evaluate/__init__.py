"""Evaluation: metrics on edits (batch), the DreamBench protocol in edit mode, ablations, the report."""
