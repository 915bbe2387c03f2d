"""Concept folders: the small files a fine-tune produces, and applying them to a pipeline."""
