"""LCDiffusion: local customized image editing (the library; no orchestration imports)."""

__version__ = "0.1.0"
