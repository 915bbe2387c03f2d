"""Batch jobs as plain functions: manifests, shards, result tables, change detection.

Prefect (tasks/, flows/) and DVC (dvc.yaml) both call these; nothing here imports either.
"""
