"""A local folder mirrored to a folder URL, file by file, each in one PUT: how jobs that write many
files (a concept folder, its training checkpoints) publish them to object storage.

Why not one upload at the end: a training run is long and its checkpoints are what a killed run
resumes from, on this machine or another; each finished checkpoint goes up as soon as it exists.
Why file by file with an order: object storage has no rename, so a folder cannot appear at
once. Instead the file readers take as a folder's done marker is put last (`state.json` of a
checkpoint, `concept.safetensors` of a concept), so a reader that finds the marker finds the
rest whole.
"""

from __future__ import annotations

import os
from pathlib import Path

from lcd.io import storage


def _stamp(p: Path) -> str:
    st = p.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def upload_folder(local: Path, url: str, sent: dict[str, str] | None = None, last: tuple[str, ...] = (),
                  skip: tuple[str, ...] = ()) -> dict[str, str]:
    """Upload every file under `local` (hidden and temp names skipped, and top-level entries named
    in `skip`) whose size and mtime are not those recorded in `sent` to `url/<relative path>`, one
    PUT each, files whose name is in `last` after all others. -> `sent` updated
    ({relative path: stamp}), to pass again so unchanged files are not sent twice."""
    sent = {} if sent is None else sent
    files = []
    for root, dirs, names in os.walk(local):
        rel_root = Path(root).relative_to(local)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not (rel_root == Path(".") and d in skip))
        files += [rel_root / n for n in sorted(names) if not n.startswith(".") and not n.endswith(".tmp")
                  and not (rel_root == Path(".") and n in skip)]
    files.sort(key=lambda r: (r.name in last, last.index(r.name) if r.name in last else 0, str(r)))
    for rel in files:
        stamp = _stamp(local / rel)
        if sent.get(rel.as_posix()) != stamp:
            storage.upload(local / rel, str(storage.join(url, *rel.parts)))
            sent[rel.as_posix()] = stamp
    return sent


def remove_gone(local: Path, url: str, sent: dict[str, str], under: str) -> None:
    """Delete the objects of files once sent from under `url/under` that `local` no longer holds
    (checkpoints the run pruned), and forget them in `sent`."""
    for rel in [r for r in sent if r.startswith(under.rstrip("/") + "/")]:
        if not (local / rel).exists():
            storage.remove(str(storage.join(url, *rel.split("/"))))
            del sent[rel]
