"""Regset outputs: manifest Parquet (explicit schema) and diffusers' `--real_prior` layout.

    out/images/00000.jpg ...   real images (as downloaded: size x size RGB JPEG)
    out/images/00007.png ...   generated class images (shortfall)
    out/images.txt             absolute image paths, one a line   (diffusers --class_data_dir)
    out/caption.txt            the caption of each image, same order (diffusers --class_prompt)
    out/urls.txt               source URL of each image ("generated" for generated ones)
    out/manifest.parquet       MANIFEST_SCHEMA, one row per image, same order
    out/downloads.parquet      every selected URL with its download status / error
    out/regset_config.json     the resolved RegsetConfig and the build report

The manifest is written last: its presence means the set is complete.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from lcd.io.atomic import atomic_path, write_text_atomic
from lcd.regset.download import STATUS_SCHEMA

MANIFEST_SCHEMA = pa.schema([
    ("path", pa.string()),  # relative to the regset folder
    ("caption", pa.string()),
    ("similarity", pa.float32()),  # caption-to-class-prompt cosine; null for generated images
    ("sha256", pa.string()),  # of the image file
    ("source", pa.string()),  # "metadata" | "clip_back" | "generated"
    ("url", pa.string()),  # null for generated images
    ("shard", pa.string()),  # metadata shard / backend the candidate came from
])
MANIFEST_FILE = "manifest.parquet"


@dataclass(frozen=True)
class RegsetEntry:
    """One image of the set: the file to copy in, and its manifest fields."""

    file: Path
    caption: str
    similarity: float | None
    sha256: str
    source: str
    url: str | None = None
    shard: str | None = None


def write_regset(out_dir: str | Path, entries: list[RegsetEntry], downloads: list[dict], info: dict) -> Path:
    """Copy the images in (atomically) and write every listing; returns the manifest path."""
    out = Path(out_dir)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST_FILE).unlink(missing_ok=True)  # incomplete until rewritten below
    rows, paths = [], []
    for i, e in enumerate(entries):
        dest = images / f"{i:05d}{e.file.suffix}"
        with atomic_path(dest) as tmp:
            shutil.copyfile(e.file, tmp)
        paths.append(str(dest.resolve()))
        rows.append(dict(path=dest.relative_to(out).as_posix(), caption=e.caption, similarity=e.similarity,
                         sha256=e.sha256, source=e.source, url=e.url, shard=e.shard))
    keep = {Path(p).name for p in paths}
    for stale in images.iterdir():  # a smaller rebuild must not leave old images behind
        if stale.name not in keep:
            stale.unlink()
    one_line = [" ".join(e.caption.split()) for e in entries]  # captions are one line each
    write_text_atomic(out / "images.txt", "".join(f"{p}\n" for p in paths))
    write_text_atomic(out / "caption.txt", "".join(f"{c}\n" for c in one_line))
    write_text_atomic(out / "urls.txt", "".join(f"{e.url or 'generated'}\n" for e in entries))
    write_text_atomic(out / "regset_config.json", json.dumps(info, indent=2, default=str))
    with atomic_path(out / "downloads.parquet") as tmp:
        pq.write_table(pa.Table.from_pylist(downloads, schema=STATUS_SCHEMA), tmp)
    with atomic_path(out / MANIFEST_FILE) as tmp:
        pq.write_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), tmp)
    return out / MANIFEST_FILE


def read_manifest(out_dir: str | Path) -> list[dict]:
    """Manifest rows (MANIFEST_SCHEMA dicts) of a finished regset folder; a missing, torn or
    foreign file is one LcdError line naming it."""
    from lcd.errors import LcdError
    from lcd.io.documents import one_line

    p = Path(out_dir) / MANIFEST_FILE
    if not p.is_file():
        raise LcdError(f"{p}: regset manifest not found (build the regset first)", item=str(p))
    try:
        return pq.read_table(p, schema=MANIFEST_SCHEMA).to_pylist()
    except Exception as e:  # noqa: BLE001 - pyarrow's errors for a broken or foreign table
        raise LcdError(f"{p}: cannot read the regset manifest: {one_line(str(e), 300)}", item=str(p)) from None
