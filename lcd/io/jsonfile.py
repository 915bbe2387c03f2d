"""Reading small JSON files (manifests, concept specs) with errors that name the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lcd.errors import LcdError


def read_json(path: str | Path, expect: type, what: str) -> Any:
    """Parse `path` and check its top-level type is `expect` (dict or list).

    Raises LcdError "<path>: not valid JSON (...)" or "<path>: must be a JSON <what>".
    """
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise LcdError(f"{p}: not valid JSON ({e.msg})", item=str(p)) from None
    except UnicodeDecodeError:  # a Parquet table, an image, UTF-16 text: not the JSON file asked for
        raise LcdError(f"{p}: not valid JSON (not UTF-8 text; a binary file such as Parquet?)", item=str(p)) from None
    if not isinstance(doc, expect):
        raise LcdError(f"{p}: must be a JSON {what}", item=str(p))
    return doc
