"""The DVC-tracked `data/` folder: concept photos, scenes with masks, manifests, LAION-style metadata.

`data/` is not in git (DVC tracks it through `data.dvc`), and a fresh clone has no DVC cache,
so the embedded default materialises it from the bundled `samples/` by copying bytes: the same
bytes give the same DVC hash, so `dvc status` finds `data.dvc` up to date without any download.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from lcd.errors import LcdError
from lcd.io.hashing import sha256_file

DATA_SUBDIRS = ("concepts", "scenes", "masks", "manifests", "laion-meta")


def materialise_data(samples_root: str | Path, data_root: str | Path) -> list[Path]:
    """Copy samples/{concepts,scenes,masks,manifests,laion-meta} into data_root; -> files written (unchanged ones are left)."""
    src, dst = Path(samples_root), Path(data_root)
    missing = [d for d in DATA_SUBDIRS if not (src / d).is_dir()]
    if missing:
        raise LcdError(f"{src}: samples folder lacks {', '.join(missing)}", item=str(src))
    written = []
    for sub in DATA_SUBDIRS:
        for f in sorted(p for p in (src / sub).rglob("*") if p.is_file() and not p.name.startswith(".")):
            out = dst / f.relative_to(src)
            if out.is_file() and sha256_file(out) == sha256_file(f):
                continue
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, out)
            written.append(out)
    return written
