"""Lossless encoders for RGB outputs: PNG (fast path) and lossless WebP, each carrying metadata.

Why not Pillow's PNG writer for outputs: it tries five row filters on every row and then runs
zlib, which costs ~0.4-0.5 s for a 12 MP photo even at level 1 and would keep a GPU waiting
(bench/pipeline.py). Here the rows get one filter (Up: each byte minus the byte above, one numpy
subtraction that releases the GIL) and levels 1-3 deflate with ISA-L (`isal`, ~60 ms for 36 MB,
GIL released) when it is installed, else zlib at the same level; the file is a plain PNG any
reader opens, usually smaller than Pillow's level-1 file. Levels 4-9 use zlib (smaller, slower),
level 0 stores. Every level is lossless: decoded pixels equal the input bytes.

Metadata: PNG gets `tEXt` chunks (`iTXt` when the text is not Latin-1), as Pillow's `PngInfo`
writes them; WebP gets an XMP packet holding the `lcd` JSON and EXIF UserComment holding the
A1111 `parameters` text (where AUTOMATIC1111 puts it in WebP). `read_lcd_text` / `read_parameters`
read either back.
"""

from __future__ import annotations

import io
import re
import struct
import zlib
from pathlib import PurePath
from typing import Literal
from xml.sax.saxutils import escape, unescape

import numpy as np

try:  # ISA-L's deflate: same format as zlib, several times faster at low levels
    from isal import isal_zlib as _fast_zlib
except ImportError:  # pragma: no cover - the lock installs it; plain zlib gives a valid PNG too
    _fast_zlib = None

OutputFormat = Literal["png", "webp"]
SUFFIX = {"png": ".png", "webp": ".webp"}


def format_of(path) -> OutputFormat | None:
    """The output format a file name asks for by its suffix (any case); None for another suffix."""
    suffix = PurePath(str(path)).suffix.lower()
    return next((f for f, s in SUFFIX.items() if s == suffix), None)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
IDAT_PIECE = 1 << 20  # IDAT chunk size (any size is valid; 1 MiB keeps CRC inputs bounded)
FILTER_BLOCK = 8 << 20  # scanline bytes filtered and deflated at a time
_XMP_NS = "https://github.com/lcdiffusion/ns/1.0/"
_EXIF_IFD, _USER_COMMENT = 0x8769, 0x9286


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def _text_chunk(key: str, value: str) -> bytes:
    """tEXt when `value` is Latin-1 (what Pillow and A1111 readers expect), else uncompressed iTXt."""
    try:
        return _chunk(b"tEXt", key.encode("latin-1") + b"\0" + value.encode("latin-1"))
    except UnicodeEncodeError:
        return _chunk(b"iTXt", key.encode("latin-1") + b"\0\0\0\0\0" + value.encode("utf-8"))


def up_filtered(rgb: np.ndarray, rows_per_block: int | None = None):
    """(H, W, 3) uint8 -> PNG scanlines with filter type 2 (Up) on every row: the first row is
    kept (its 'above' is zeros), each later row minus the one above, modulo 256. Yields blocks of
    `rows_per_block` scanlines, each (rows, 1 + 3W), so a 200 MP image is never filtered whole."""
    h, w, _ = rgb.shape
    rows = rgb.reshape(h, w * 3)
    step = rows_per_block or h
    for y0 in range(0, h, step):
        y1 = min(h, y0 + step)
        out = np.empty((y1 - y0, w * 3 + 1), np.uint8)
        out[:, 0] = 2
        if y0 == 0:
            out[0, 1:] = rows[0]
            np.subtract(rows[1:y1], rows[: y1 - 1], out=out[1:, 1:])
        else:
            np.subtract(rows[y0:y1], rows[y0 - 1 : y1 - 1], out=out[:, 1:])
        yield out


def _compressor(level: int):
    """A zlib-format stream compressor: ISA-L for levels 1-3 when installed, zlib otherwise (0 stores)."""
    if 1 <= level <= 3 and _fast_zlib is not None:
        return _fast_zlib.compressobj(level)
    return zlib.compressobj(level)


def encode_png(rgb: np.ndarray, texts: dict[str, str] | None = None, level: int = 1) -> bytes:
    """(H, W, 3) uint8 RGB -> PNG bytes (8-bit RGB, non-interlaced) with `texts` as text chunks.
    Rows are filtered and deflated in blocks of about FILTER_BLOCK bytes (memory beyond the
    output stays bounded whatever the image size)."""
    if not (rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.dtype == np.uint8):
        raise ValueError(f"encode_png takes (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
    h, w, _ = rgb.shape
    comp = _compressor(level)
    blocks = up_filtered(np.ascontiguousarray(rgb), max(1, FILTER_BLOCK // (3 * w + 1)))
    z = b"".join([comp.compress(memoryview(b)) for b in blocks] + [comp.flush()])
    parts = [PNG_SIGNATURE, _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))]
    parts += [_text_chunk(k, v) for k, v in (texts or {}).items()]
    parts += [_chunk(b"IDAT", z[i : i + IDAT_PIECE]) for i in range(0, len(z), IDAT_PIECE)]
    parts.append(_chunk(b"IEND", b""))
    return b"".join(parts)


def _xmp(lcd_json: str) -> bytes:
    return ('<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
            '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
            f'<rdf:Description rdf:about="" xmlns:lcd="{_XMP_NS}"><lcd:meta>{escape(lcd_json)}</lcd:meta>'
            '</rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end="r"?>').encode("utf-8")


def encode_webp(rgb: np.ndarray, texts: dict[str, str] | None = None, method: int = 0) -> bytes:
    """(H, W, 3) uint8 -> lossless WebP bytes; texts["lcd"] goes to XMP, texts["parameters"] to
    EXIF UserComment. `method` 0-6 is libwebp's effort (0 fastest; higher: smaller, slower)."""
    from PIL import Image

    texts = texts or {}
    kw = {}
    if "lcd" in texts:
        kw["xmp"] = _xmp(texts["lcd"])
    if "parameters" in texts:
        exif = Image.Exif()
        exif.get_ifd(_EXIF_IFD)[_USER_COMMENT] = b"UNICODE\0" + texts["parameters"].encode("utf-16-be")
        kw["exif"] = exif.tobytes()
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="WEBP", lossless=True, quality=0, method=method, **kw)
    return buf.getvalue()


def encode(rgb: np.ndarray, fmt: OutputFormat, texts: dict[str, str] | None = None, png_level: int = 1,
           webp_method: int = 0) -> bytes:
    """The one switch between output formats (edit.output_format)."""
    if fmt == "webp":
        return encode_webp(rgb, texts, webp_method)
    return encode_png(rgb, texts, png_level)


def read_lcd_text(im) -> str | None:
    """The `lcd` JSON text of an opened PIL image written by this module or by Pillow's PngInfo."""
    if "lcd" in im.info:
        return im.info["lcd"]
    xmp = im.info.get("xmp")
    if xmp:
        text = xmp.decode("utf-8", "replace") if isinstance(xmp, bytes) else str(xmp)
        m = re.search(r"<lcd:meta>(.*?)</lcd:meta>", text, re.S)
        if m:
            return unescape(m.group(1))
    return None


def read_parameters(im) -> str | None:
    """The A1111 `parameters` text: PNG text chunk, or WebP/JPEG EXIF UserComment."""
    if "parameters" in im.info:
        return im.info["parameters"]
    raw = im.getexif().get_ifd(_EXIF_IFD).get(_USER_COMMENT)
    if isinstance(raw, bytes) and raw.startswith(b"UNICODE\0"):
        return raw[8:].decode("utf-16-be")
    return raw if isinstance(raw, str) else None
