"""CLI subcommands, one module each (discovered by `lcd.cli`)."""

from __future__ import annotations

from pathlib import Path

from lcd.config import Params, load_params


DEFAULT_PARAMS = "params.yaml"


def params_or_default(path: str | None) -> Params:
    """The --params file (an error when it is missing: a typo must not run other settings);
    without --params, ./params.yaml when it exists, else the built-in defaults (a notebook or a
    bare checkout)."""
    if path is not None:
        return load_params(path)
    return load_params(DEFAULT_PARAMS) if Path(DEFAULT_PARAMS).exists() else Params()
