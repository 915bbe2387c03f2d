"""Reading `.pt` / `.bin` tensor files with torch's weights-only unpickler, failures in one line.

torch refuses a pickle that names anything but tensors and containers (good: such a file could run
code), but says so in a dozen lines that end by suggesting `weights_only=False`, and its
unpickler warns on stderr about the protocol of files it then refuses. Every read of a user's
pickle goes through `load_weights` so the refusal is one line naming the file and the global.
"""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path
from typing import Any

from lcd.errors import ModelLoadError


def error_line(e: BaseException) -> str:
    """`Type: reason` in one line. A weights-only refusal keeps its first sentence and the
    unpickler's reason ("Unsupported global: GLOBAL posix.system ..."); any other message its
    first line, cut at its first sentence when long."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    first = lines[0] if lines else ""
    if isinstance(e, pickle.UnpicklingError) and first.startswith("Weights only load failed"):
        # the reason: after "WeightsUnpickler error:" (same line or the next), or a line of its own
        # ("Trying to load unsupported GLOBAL posix.system ...", "Unsupported operand 149"); torch's
        # numbered advice ("(1) In PyTorch 2.6 ...", "(2) Alternatively ...") and links are not reasons
        rest = []
        for ln in lines[1:]:
            if "WeightsUnpickler error:" in ln:
                ln = ln.split("WeightsUnpickler error:", 1)[1].strip()
            elif re.match(r"\(\d\)|Check the documentation|Please file an issue", ln):
                continue
            if ln:
                rest.append(ln)
        why = rest[0].split(". ")[0][:200] if rest else ""
        first = "refused by torch's weights-only unpickler" + (f" ({why})" if why else "")
    elif len(first) > 200:
        first = first.split(". ")[0][:200]
    first = "".join(c if c.isprintable() else repr(c)[1:-1] for c in first)
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def load_weights(path: str | Path, what: str, mmap: bool = False) -> Any:
    """`torch.load(path, weights_only=True)` on the CPU, its warnings silenced; any failure is a
    ModelLoadError "<path>: cannot read <what>: <error_line>"."""
    import torch

    p = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(str(p), map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # noqa: BLE001 - refused, torn, not a pickle, a folder: all the file's fault
        raise ModelLoadError(f"{p}: cannot read {what}: {error_line(e)}", item=str(p)) from None
