"""Prefect tasks: thin wrappers that resolve paths, call lcd, save, and return a small summary.

One task handles a shard of items, never a single image (a task per image does not scale).
"""
