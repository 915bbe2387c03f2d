"""Prefect flows: one per pipeline stage plus a parent. Deployments are declared in prefect.yaml."""
