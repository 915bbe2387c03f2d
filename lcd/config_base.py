"""The base of every typed config (its own module so stage configs import it without cycles)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictConfig(BaseModel):
    """Base for every config: frozen, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)
