"""Concept fine-tuning: which weights train, the data they see, the loop, the layer analysis."""
