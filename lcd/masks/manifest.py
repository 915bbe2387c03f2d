"""The masks manifest (which images, with which prompts) and fetching its images as bytes.

A manifest is CSV or Parquet with a column `image` (a local path or an http(s) URL), optional
`image_id` (default: the file stem of `image`, the id edit-batch and `lcd edit --masks` look up) and optional `prompts` (a JSON list of prompt objects,
see `lcd.masks.predict.parse_prompt`). Images are read as bytes first so their SHA-256 (the
resume key) is taken over exactly what was decoded.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from lcd.errors import InputImageError, LcdError, NetworkError
from lcd.io import http
from lcd.io.config import IoConfig
from lcd.io.images import pil_to_rgb


@dataclass(frozen=True)
class ManifestItem:
    image_id: str
    image: str  # path or URL, as written in the manifest
    prompts_json: str | None = None  # parsed per image, so one bad row only fails that image


def read_manifest(path: str | Path) -> list[ManifestItem]:
    """CSV or Parquet manifest -> items. A missing `image` column, a column of the wrong type, an
    empty image cell or a repeated id is an error naming the file (and the row); a CSV must be
    UTF-8 text (a binary file or a NUL byte is named, its bytes never echoed)."""
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    from lcd.io.documents import one_line

    p = Path(path)
    if not p.exists():
        raise LcdError(f"{p}: manifest not found", item=str(p))
    if not p.is_file():
        raise LcdError(f"{p}: manifest is not a regular file", item=str(p))
    parquet = p.suffix == ".parquet"
    if not parquet:
        _check_csv_text(p)
    text_cols = {c: pa.string() for c in ("image", "image_id", "prompts")}  # "001" stays an id, not 1
    try:
        table = pq.read_table(p) if parquet else pcsv.read_csv(p, convert_options=pcsv.ConvertOptions(column_types=text_cols))
    except Exception as e:  # noqa: BLE001 - pyarrow's errors for a broken file; the file's fault
        raise LcdError(f"{p}: cannot read manifest as {'Parquet' if parquet else 'CSV'}: {_table_error(e)}",
                       item=str(p)) from None
    cols = table.column_names
    if "image" not in cols:
        raise LcdError(f"{p}: manifest needs an 'image' column (path or URL); has {one_line(str(cols), 200)}",
                       item=str(p))
    for name in ("image", "prompts") + (() if "image_id" not in cols or _integer(table.schema.field("image_id").type)
                                        else ("image_id",)):
        if name in cols and not _texty(table.schema.field(name).type):
            raise LcdError(f"{p}: column {name!r} must hold text, got {table.schema.field(name).type}", item=str(p))
    images = table.column("image").to_pylist()
    given = table.column("image_id").to_pylist() if "image_id" in cols else [None] * len(images)
    prompts = table.column("prompts").to_pylist() if "prompts" in cols else [None] * len(images)
    ids = []
    for row, (im, gid) in enumerate(zip(images, given)):
        if not im or not str(im).strip():
            raise LcdError(f"{p}: row {row + 1}: image is empty (a path or URL is needed)", item=str(p))
        ids.append(str(gid) if gid not in (None, "") else image_stem(im))
    seen: set[str] = set()
    for i in ids:
        if i in seen:
            raise LcdError(f"{p}: image_id {one_line(repr(i), 80)} appears more than once (ids default to file stems: "
                           "give an image_id column when two images share a stem)", item=i)
        seen.add(i)
    return [ManifestItem(i, im, pr if pr else None) for i, im, pr in zip(ids, images, prompts)]


def _texty(t) -> bool:
    import pyarrow as pa

    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t) or (
        pa.types.is_dictionary(t) and (pa.types.is_string(t.value_type) or pa.types.is_large_string(t.value_type)))


def _integer(t) -> bool:
    import pyarrow as pa

    return pa.types.is_integer(t)


def _check_csv_text(p: Path, chunk: int = 1 << 20) -> None:
    """A CSV manifest is UTF-8 text, checked in chunks before pyarrow reads it (pyarrow's parse
    errors echo the offending row raw, NUL bytes and all)."""
    import codecs

    from lcd.io.documents import text_problem

    dec = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(p, "rb") as f:
        while data := f.read(chunk):
            if offset == 0 and (problem := text_problem(data[:4])) and "byte-order mark" in problem:
                raise LcdError(f"{p}: CSV manifest {problem}", item=str(p))
            nul = data.find(b"\x00")
            if nul >= 0:
                raise LcdError(f"{p}: CSV manifest is not UTF-8 text: a binary file (NUL byte at offset {offset + nul})",
                               item=str(p))
            try:
                dec.decode(data)
            except UnicodeDecodeError as e:
                raise LcdError(f"{p}: CSV manifest is not UTF-8 text (bytes {e.object[e.start:e.start + 4]!r} near "
                               f"offset {offset + e.start})", item=str(p)) from None
            offset += len(data)
    try:
        dec.decode(b"", final=True)
    except UnicodeDecodeError:
        raise LcdError(f"{p}: CSV manifest is not UTF-8 text (it ends inside a character)", item=str(p)) from None


def _table_error(e: Exception) -> str:
    """pyarrow's message in one line, the row it quotes cut to a short repr."""
    import re

    from lcd.io.documents import one_line

    text = str(e).strip()
    m = re.match(r"(CSV parse error: [^:\n]*?): (.*)", text, re.S)
    if m:
        return f"{m[1]} (row starting {m[2][:24]!r})"
    return one_line(text, 300)


def image_stem(image: str) -> str:
    """The default image_id of a path or URL: its file name without the suffix."""
    return PurePosixPath(image.split("?", 1)[0].rstrip("/")).stem or image


def parse_prompts_json(raw: str | None, name: str) -> list[dict]:
    """The `prompts` cell -> list of prompt objects (validated later against the image size)."""
    from lcd.masks.predict import PromptError

    from lcd.io.documents import json_value, kind

    if raw is None:
        return []
    if not isinstance(raw, (str, bytes)):
        raise PromptError(f"{name}: prompts must be JSON text (a list of objects), got {kind(raw)}", item=name)
    val, why = json_value(raw)  # nesting and repeated keys limited, one line either way
    if why is not None:
        raise PromptError(f"{name}: prompts is {why}", item=name)
    if not isinstance(val, list):
        raise PromptError(f"{name}: prompts must be a JSON list of objects, got {kind(val)}", item=name)
    bad = next((i for i, x in enumerate(val) if not isinstance(x, dict)), None)
    if bad is not None:
        raise PromptError(f"{name}: prompts[{bad}] must be a JSON object, got {kind(val[bad])}", item=name)
    return val


MAX_INPUT_BYTES = 1 << 30  # 1 GiB: no photo is bigger; a larger file is refused before it is read


def fetch_bytes(ref: str, name: str, limits: IoConfig | None = None, max_bytes: int = MAX_INPUT_BYTES) -> bytes:
    """Bytes of a local file or an http(s) URL; a missing file, a folder, a FIFO or device (never
    read: it could block forever), a file above `max_bytes` or a failed download names the item.
    A URL is read within `limits` (the `io` section, lcd.io.http: connect, first-byte and
    whole-transfer deadlines, and the smaller of its byte limit and `max_bytes`), so one server
    dripping a byte a second holds the run for http_total_timeout_s, not for hours."""
    if http.is_http(ref):
        limits = limits or IoConfig()
        if limits.http_max_bytes > max_bytes:
            limits = limits.model_copy(update={"http_max_bytes": max_bytes})
        try:
            return http.fetch(ref, limits)
        except FileNotFoundError as e:  # HTTP 404 / 410
            raise InputImageError(f"{name}: cannot download {ref}: {e.strerror}", item=name) from None
        except NetworkError as e:  # lcd.io.http's message starts with the URL
            raise NetworkError(f"{name}: cannot download {e}", item=name) from None
    try:
        st = os.stat(ref)
    except (OSError, ValueError):  # missing, unreadable folder on the way, a NUL in the path
        raise InputImageError(f"{name}: {ref}: file not found", item=name) from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file (FIFO, device or socket)"
        raise InputImageError(f"{name}: {ref}: {kind}; expected an image file", item=name)
    if st.st_size > max_bytes:
        raise InputImageError(f"{name}: {ref}: {st.st_size} bytes, above the limit of {max_bytes}", item=name)
    try:
        return Path(ref).read_bytes()
    except OSError as e:
        raise InputImageError(f"{name}: {ref}: cannot read ({e.strerror or e})", item=name) from None


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def decode_image(data: bytes, name: str) -> np.ndarray:
    """Encoded image bytes -> (H, W, 3) uint8 RGB, upright per EXIF; at most lcd.io.images.MAX_PIXELS,
    checked from the header (a 76 KB 1-bit PNG of 25000x25000 decoded to 7 GB)."""
    from lcd.io.images import MAX_PIXELS, open_header

    try:
        im = open_header(io.BytesIO(data))
        if im.width * im.height > MAX_PIXELS:
            raise InputImageError(f"{name}: {im.width}x{im.height} is {im.width * im.height / 1e6:.0f} MP, above the "
                                  f"limit of {MAX_PIXELS / 1e6:.0f} MP", item=name)
        im.load()
    except InputImageError:  # a ValueError: not to be re-worded below
        raise
    except UnidentifiedImageError:
        raise InputImageError(f"{name}: not an image file (unrecognised format)", item=name) from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise InputImageError(f"{name}: corrupt or truncated image ({e})", item=name) from None
    try:
        im = ImageOps.exif_transpose(im)
    except Exception:  # a broken EXIF block should not make a readable image unusable
        pass
    return pil_to_rgb(im).copy()
