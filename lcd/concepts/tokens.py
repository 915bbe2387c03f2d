"""Concept tokens: `[P]`-style pseudo-words, their syntax, and the check that a prompt uses only known ones."""

from __future__ import annotations

import re
from typing import Iterable, Sequence

from lcd.errors import PromptError

CONCEPT_TOKEN = re.compile(r"\[[A-Za-z0-9_\-]+\]")


def concept_tokens(prompt: str) -> list[str]:
    """The `[NAME]` tokens a prompt uses, in order of appearance."""
    return CONCEPT_TOKEN.findall(prompt)


def check_prompt(prompt: str, known: Iterable[str], required: Sequence[str] = (), item: str = "prompt") -> None:
    """Raise PromptError when `prompt` uses an unknown concept token, or lacks every `required` one."""
    known = set(known)
    for tok in concept_tokens(prompt):
        if tok not in known:
            have = ", ".join(sorted(known)) or "none"
            raise PromptError(
                f"{item}: prompt {prompt!r} uses concept token {tok} that no loaded concept defines "
                f"(loaded: {have}); pass the concept that defines it (--concept DIR)",
                item=item,
            )
    if required and not any(tok in prompt for tok in required):
        raise PromptError(
            f"{item}: prompt {prompt!r} does not contain the concept token "
            f"({' or '.join(required)}); the concept would not be used",
            item=item,
        )
