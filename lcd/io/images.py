"""Reading images and masks into canonical arrays, writing PNGs with generation metadata.

Canonical forms: an image is `np.ndarray` (H, W, 3) uint8 RGB; a mask is (H, W) bool where True
means "edit here". Every error names the file it is about (see `lcd.errors`).
"""

from __future__ import annotations

import io
import json
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from lcd.errors import InputImageError
from lcd.io.atomic import atomic_path
from lcd.io.config import IoConfig
from lcd.io.encode import OutputFormat, encode, read_lcd_text
from lcd.io.storage import is_remote, normalize, not_found_message, open_read, read_bytes

Image.MAX_IMAGE_PIXELS = 20_000 * 20_000  # Pillow's own bomb guard (it only warns below 2x this)
# largest image read (width x height), checked from the header before any pixel is decoded:
# 200 MP is a 16-bit 200 MP photo in 1.2 GB of RGB; `edit.max_image_mp` sets it per run
MAX_PIXELS = 200_000_000
# The one list of photo/image suffixes: training photos, nightly fingerprints, scenes, evaluation.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


def image_files(folder: str | Path) -> list[Path]:
    """The image files directly in `folder` (by IMAGE_SUFFIXES, any case), sorted; hidden files
    and other suffixes are ignored. A missing folder gives []."""
    d = Path(folder)
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() in IMAGE_SUFFIXES)


def _open(path: str | Path, max_pixels: int | None = None, limits: IoConfig | None = None) -> Image.Image:
    if is_remote(path):  # an input by URL, an output on object storage (contact sheets, checks)
        try:
            data = read_bytes(path, limits)  # an http(s) URL within `limits` (lcd.io.http)
        except FileNotFoundError as e:
            raise InputImageError(f"{path}: {not_found_message(e)}", item=str(path)) from None
        return _decode(io.BytesIO(data), str(path), max_pixels)
    p = Path(path)
    if not p.exists():
        raise InputImageError(f"{p}: file not found", item=str(p))
    if p.is_dir():
        raise InputImageError(f"{p}: is a directory, not an image file", item=str(p))
    if not p.is_file():  # reading a FIFO or a device would never end
        raise InputImageError(f"{p}: not a regular file (FIFO, device or socket)", item=str(p))
    return _decode(p, str(p), max_pixels)


_OPEN_LOCK = threading.Lock()


def open_header(src) -> Image.Image:
    """`Image.open` (the header only) without Pillow's bomb warning: callers check their own pixel
    limit from it next, so the warning is noise on the user's terminal. Serialised because
    `warnings.catch_warnings` is not thread-safe (a batch reads its items in threads)."""
    with _OPEN_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(src)


def _decode(src, p: str, max_pixels: int | None = None) -> Image.Image:
    limit = MAX_PIXELS if max_pixels is None else max_pixels
    try:
        im = open_header(src)
        if im.width * im.height > limit:  # from the header: nothing decoded yet
            im.close()  # Pillow opened the file itself
            raise InputImageError(f"{p}: {im.width}x{im.height} is {im.width * im.height / 1e6:.0f} MP, above the "
                                  f"limit of {limit / 1e6:.0f} MP (edit.max_image_mp)", item=p)
        im.load()
    except InputImageError:
        raise
    except UnidentifiedImageError:
        raise InputImageError(f"{p}: not an image file (unrecognised format)", item=p) from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise InputImageError(f"{p}: corrupt or truncated image ({e})", item=p) from None
    try:
        return ImageOps.exif_transpose(im)  # cameras store rotation in EXIF; users see it upright
    except Exception:  # a broken EXIF block should not make a readable image unusable
        return im


def pil_to_rgb(im: Image.Image) -> np.ndarray:
    """Any PIL mode -> (H, W, 3) uint8. Alpha is composited on white; 16-bit is scaled to 8-bit."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        a8 = np.clip(np.round(a / hi * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(a8[..., None], 3, axis=2)
    if im.mode == "F":
        a8 = np.clip(np.round(np.asarray(im) * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(a8[..., None], 3, axis=2)
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA"):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(bg, rgba).convert("RGB"))
    return np.asarray(im if im.mode == "RGB" else im.convert("RGB"))  # RGB: no converted copy (12 MP: 36 MB)


def load_image(path: str | Path, max_pixels: int | None = None, limits: IoConfig | None = None) -> np.ndarray:
    """Read an image file (upright per EXIF) as (H, W, 3) uint8 RGB. Only regular files, and at most
    `max_pixels` (default MAX_PIXELS), checked before decoding. A URL is read within `limits`
    (the `io` section: deadlines, byte limit); a failed read is a NetworkError naming it."""
    return pil_to_rgb(_open(path, max_pixels, limits)).copy()


def as_mask(mask: np.ndarray | Image.Image, name: str = "mask") -> np.ndarray:
    """Array or PIL mask -> (H, W) bool, non-zero = edit. (H, W, C) counts any non-zero channel."""
    a = np.asarray(mask.convert("L") if isinstance(mask, Image.Image) and mask.mode not in ("1", "L", "I", "F") else mask)
    if a.ndim == 3:
        a = a.any(axis=2)
    if a.ndim != 2:
        raise InputImageError(f"{name}: a mask must be 2-D (H, W), got shape {a.shape}", item=name)
    return a.astype(bool)


def load_mask(path: str | Path, max_pixels: int | None = None, limits: IoConfig | None = None) -> np.ndarray:
    """Read a mask image (non-zero = edit) as (H, W) bool; limits as load_image."""
    im = _open(path, max_pixels, limits)
    if im.mode == "P":
        im = im.convert("L")
    return as_mask(im, str(path))


def check_mask_fits(image: np.ndarray, mask: np.ndarray, image_name: str, mask_name: str) -> None:
    """Raise naming both items when the mask is not the image's size."""
    if mask.shape[:2] != image.shape[:2]:
        h, w = image.shape[:2]
        mh, mw = mask.shape[:2]
        raise InputImageError(
            f"{mask_name}: mask is {mw}x{mh} but image {image_name} is {w}x{h}; they must match",
            item=mask_name,
        )


def a1111_parameters(meta: dict[str, Any]) -> str:
    """The 'parameters' text chunk in AUTOMATIC1111's convention (read by many image tools)."""
    fields = [
        ("Steps", meta.get("steps")),
        ("Sampler", meta.get("sampler", "DDIM")),
        ("CFG scale", meta.get("guidance")),
        ("Seed", meta.get("seed")),
        ("Size", meta.get("output_size") or meta.get("size")),  # the image's own size, as A1111 writes it
        ("Model hash", meta.get("model_hash")),
        ("Model", meta.get("model")),
    ]
    text = meta.get("prompt", "")
    if meta.get("negative_prompt"):
        text += f"\nNegative prompt: {meta['negative_prompt']}"
    return text + "\n" + ", ".join(f"{k}: {v}" for k, v in fields if v is not None)


def _texts(meta: dict[str, Any] | None) -> dict[str, str]:
    """Generation metadata -> text chunks: A1111's 'parameters' and the full JSON 'lcd'."""
    if not meta:
        return {}
    return {"parameters": a1111_parameters(meta), "lcd": json.dumps(meta, sort_keys=True, default=str)}


def save_png(path: str | Path, image: np.ndarray, meta: dict[str, Any] | None = None,
             compress_level: int = 6) -> Path:
    """Write (H, W, 3) uint8 (or an (H, W) bool mask, as 1-bit) as PNG atomically, with 'parameters' + full JSON 'lcd' text chunks.
    `compress_level` 0-9 (lossless at every level). RGB goes through lcd.io.encode's fast writer
    (one row filter, ISA-L deflate at 1-3: a 12 MP photo in ~0.1 s at level 1); masks and other
    arrays through Pillow."""
    a = np.ascontiguousarray(image)
    if a.ndim == 3 and a.shape[2] == 3 and a.dtype == np.uint8:
        return save_output(path, a, meta, "png", png_level=compress_level)
    info = PngImagePlugin.PngInfo()
    for k, v in _texts(meta).items():
        info.add_text(k, v)
    with atomic_path(path) as tmp:
        Image.fromarray(a).save(tmp, format="PNG", pnginfo=info, compress_level=compress_level)
    return normalize(path)


def save_output(path: str | Path, image: np.ndarray, meta: dict[str, Any] | None, fmt: "OutputFormat",
                png_level: int = 1, webp_method: int = 0) -> Path:
    """Write an (H, W, 3) uint8 edit atomically as lossless `fmt` ("png" | "webp", lcd.io.encode)
    with its metadata; the file appears whole or not at all."""
    data = encode(image, fmt, _texts(meta), png_level=png_level, webp_method=webp_method)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return normalize(path)


def read_png_meta(path: str | Path, limits: IoConfig | None = None) -> dict[str, Any]:
    """The 'lcd' JSON written by `save_png` / `save_output` (a PNG text chunk, or a WebP's XMP);
    {} when absent. `path` may be a remote URL (an http(s) one read within `limits`)."""
    with open_read(path, limits) as f, Image.open(f) as im:
        raw = read_lcd_text(im)
    return json.loads(raw) if raw else {}
