"""Reading small JSON files (manifests, concept specs) with errors that name the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lcd.io.documents import MAX_DOC_BYTES, load_json_file


def read_json(path: str | Path, expect: type, what: str, max_bytes: int = MAX_DOC_BYTES) -> Any:
    """Parse `path` and check its top-level type is `expect` (dict or list).

    Raises LcdError "<path>: not valid JSON (...)", "<path>: not UTF-8 text ..." or
    "<path>: must be a JSON <what>, got <kind>"; nesting, size and repeated keys are limited as
    in `lcd.io.documents`.
    """
    return load_json_file(path, expect, what, max_bytes)
