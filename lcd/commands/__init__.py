"""CLI subcommands, one module each (discovered by `lcd.cli`)."""

from __future__ import annotations

from pathlib import Path

from lcd.config import Params, load_params


def params_or_default(path: str) -> Params:
    """params.yaml when it exists, else the built-in defaults (a notebook or a bare checkout)."""
    return load_params(path) if Path(path).exists() else Params()
