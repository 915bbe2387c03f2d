"""The masks manifest (which images, with which prompts) and fetching its images as bytes.

A manifest is CSV or Parquet with a column `image` (a local path or an http(s) URL), optional
`image_id` (default: the file stem of `image`, the id edit-batch and `lcd edit --masks` look up) and optional `prompts` (a JSON list of prompt objects,
see `lcd.masks.predict.parse_prompt`). Images are read as bytes first so their SHA-256 (the
resume key) is taken over exactly what was decoded.
"""

from __future__ import annotations

import hashlib
import io
import json
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
    """CSV or Parquet manifest -> items. A missing `image` column or a repeated id is an error."""
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    p = Path(path)
    if not p.exists():
        raise LcdError(f"{p}: manifest not found", item=str(p))
    try:
        table = pq.read_table(p) if p.suffix == ".parquet" else pcsv.read_csv(p)
    except Exception as e:
        raise LcdError(f"{p}: cannot read manifest as {'Parquet' if p.suffix == '.parquet' else 'CSV'}: {e}", item=str(p)) from None
    cols = table.column_names
    if "image" not in cols:
        raise LcdError(f"{p}: manifest needs an 'image' column (path or URL); has {cols}", item=str(p))
    images = [str(v) for v in table.column("image").to_pylist()]
    ids = [str(v) for v in table.column("image_id").to_pylist()] if "image_id" in cols else [image_stem(i) for i in images]
    prompts = table.column("prompts").to_pylist() if "prompts" in cols else [None] * len(images)
    seen: set[str] = set()
    for i in ids:
        if i in seen:
            raise LcdError(f"{p}: image_id {i!r} appears more than once (ids default to file stems: give an "
                           "image_id column when two images share a stem)", item=i)
        seen.add(i)
    return [ManifestItem(i, im, pr if pr else None) for i, im, pr in zip(ids, images, prompts)]


def image_stem(image: str) -> str:
    """The default image_id of a path or URL: its file name without the suffix."""
    return PurePosixPath(image.split("?", 1)[0].rstrip("/")).stem or image


def parse_prompts_json(raw: str | None, name: str) -> list[dict]:
    """The `prompts` cell -> list of prompt objects (validated later against the image size)."""
    from lcd.masks.predict import PromptError

    if raw is None:
        return []
    try:
        val = json.loads(raw)
    except json.JSONDecodeError as e:
        raise PromptError(f"{name}: prompts is not valid JSON ({e.msg} at {e.pos})", item=name) from None
    if not isinstance(val, list):
        raise PromptError(f"{name}: prompts must be a JSON list of objects, got {type(val).__name__}", item=name)
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
