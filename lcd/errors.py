"""Errors raised on bad input. Each names the item it is about so a batch can record it."""

from __future__ import annotations


class LcdError(ValueError):
    """A user-facing error: bad input, missing file, incompatible weights.

    Subclasses ValueError so callers that validate inputs the diffusers way keep working.
    `item` names the file / id / argument the error is about (recorded in failure tables).
    """

    def __init__(self, message: str, item: str | None = None):
        super().__init__(message)
        self.item = item


class InputImageError(LcdError):
    """An image or mask file is missing, unreadable, not an image, or the wrong size."""


class PromptError(LcdError):
    """A prompt uses an unknown concept token, or lacks the token of the concept it is run with."""


class ModelLoadError(LcdError):
    """A model reference cannot be resolved or loaded, or weights do not fit the base model."""


class NetworkError(LcdError):
    """A URL could not be read: no connection or answer in time, a body over its deadline or the
    byte limit, a connection closed early, an HTTP error (lcd.io.http)."""


class CoordinatorBusy(LcdError):
    """Another coordinator holds the out_root's lease (lcd.jobs.lease): this one waited its bound
    and refuses, naming the running one."""
