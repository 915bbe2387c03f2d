"""The base of every typed config (its own module so stage configs import it without cycles)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictConfig(BaseModel):
    """Base for every config: frozen, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def multiple_of_8(name: str, v: int) -> int:
    """Validator body for pixel sizes the VAE sees: it downsamples by 8."""
    if v % 8:
        raise ValueError(f"{name} must be a multiple of 8 (the VAE downsamples by 8), got {v}")
    return v
