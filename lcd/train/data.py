"""Training data: concept photos with captions, the Custom Diffusion augmentation, prior images.

Arrays: photos are (H, W, 3) uint8; a training example is (image (3, S, S) float32 in [-1, 1],
loss mask (1, S/8, S/8) float32 in {0, 1}, caption str, SDXL time ids (6,)). All randomness comes
from the `np.random.Generator` passed in, so a resumed run replays the exact same batches.

SDXL is conditioned on each photo's original size and crop ("micro-conditioning", Podell et al.
2023, Sec. 2.2), and its trainers pass them per example: diffusers' train_dreambooth_lora_sdxl.py
resizes the shorter side to the resolution, crops, and sends (original h, w) + (crop top, left) +
(target h, w). Here the same six numbers: the photo's size as read, the top-left of the square
crop in the frame whose shorter side is S (plus the offset of a zoom crop, in that frame), S, S.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from lcd.errors import InputImageError, LcdError
from lcd.io.images import IMAGE_SUFFIXES, image_files, load_image
from lcd.io.hashing import sha256_file

SMALL_WORDS = ("a far away", "very small")  # prefixed when the object is shrunk in the frame
LARGE_WORDS = ("zoomed in", "close up")  # prefixed when it is enlarged and cropped


@dataclass
class Example:
    """One image with its caption (and the file it came from, for errors and hashes)."""

    image: np.ndarray  # (H, W, 3) uint8
    caption: str
    name: str
    sha256: str = ""
    original_size: tuple[int, int] | None = None  # (h, w) of the photo as read (None: image's own)
    crop_top_left: tuple[int, int] = (0, 0)  # (y, x) of the square crop, in the frame whose shorter side is S


def photo_files(folder: str | Path) -> list[Path]:
    """The photos of a concept folder (lcd.io.images.image_files); a missing folder is an error."""
    p = Path(folder)
    if not p.is_dir():
        raise InputImageError(f"{p}: photo folder not found", item=str(p))
    return image_files(p)


def load_concept_photos(
    folder: str | Path, token: str, class_word: str, template: str, *, min_photos: int, min_px: int
) -> list[Example]:
    """Read a concept's photos; a `<stem>.txt` beside a photo overrides the template caption
    (it must then contain the token). Errors name the folder or the photo."""
    if not class_word.strip():
        raise LcdError(f"{folder}: no class word given for concept {token} (e.g. 'dog')", item=str(folder))
    files = photo_files(folder)
    if len(files) < min_photos:
        raise InputImageError(
            f"{folder}: {len(files)} photo(s) found, at least {min_photos} are needed "
            f"(suffixes {', '.join(IMAGE_SUFFIXES)})",
            item=str(folder),
        )
    out = []
    for f in files:
        img = load_image(f)
        if min(img.shape[:2]) < min_px:
            raise InputImageError(
                f"{f}: photo is {img.shape[1]}x{img.shape[0]}, its shorter side must be at least {min_px} px",
                item=str(f),
            )
        side = f.with_suffix(".txt")
        caption = _text(side, "caption file").strip() if side.exists() else template.format(token=token, class_word=class_word)
        if token not in caption:
            raise LcdError(f"{side}: caption {caption!r} does not contain the concept token {token}", item=str(side))
        out.append(Example(img, caption, str(f), sha256_file(f)))
    return out


def load_reg_set(folder: str | Path, default_caption: str) -> list[Example]:
    """The images and captions of a regularization set (layouts: `reg_set_pairs`)."""
    return [Example(load_image(p), c, str(p)) for p, c in reg_set_pairs(folder, default_caption)]


def reg_set_pairs(folder: str | Path, default_caption: str) -> list[tuple[Path, str]]:
    """(image path, caption) of a regularization set, no image read, in one of four layouts:
    - `lcd regset` output: `manifest.parquet` (columns path relative to the folder, caption),
      written last, so its presence means the set is complete;
    - diffusers' `--real_prior` layout: `images.txt` (one path per line) + `caption.txt` (one per line);
    - `manifest.jsonl`: {"image": path relative to the folder, "caption": str} per line;
    - a plain folder of images, each with an optional `<stem>.txt` caption (else `default_caption`).
    """
    root = Path(folder)
    if not root.is_dir():
        raise InputImageError(f"{root}: regularization folder not found", item=str(root))
    pairs: list[tuple[Path, str]] = []
    if (root / "manifest.parquet").exists():
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(root / "manifest.parquet")
        except Exception as e:  # noqa: BLE001 - a torn or foreign table: one line naming it
            from lcd.io.documents import one_line

            raise LcdError(f"{root}/manifest.parquet: cannot read: {one_line(str(e), 300)}",
                           item=str(root / "manifest.parquet")) from None
        missing = [c for c in ("path", "caption") if c not in table.column_names]
        if missing:
            raise LcdError(f"{root}/manifest.parquet: missing column(s) {missing}", item=str(root / "manifest.parquet"))
        pairs = [(_under(root, r["path"]), r["caption"] or default_caption) for r in table.select(["path", "caption"]).to_pylist()]
    elif (root / "images.txt").exists() and (root / "caption.txt").exists():
        paths = [ln.strip() for ln in _text(root / "images.txt").splitlines() if ln.strip()]
        caps = [ln.strip() for ln in _text(root / "caption.txt").splitlines() if ln.strip()]
        if len(paths) != len(caps):
            raise LcdError(f"{root}: images.txt has {len(paths)} lines but caption.txt {len(caps)}", item=str(root))
        pairs = [(_under(root, p), c) for p, c in zip(paths, caps)]
    elif (root / "manifest.jsonl").exists():
        from lcd.io.documents import json_value, kind

        for i, ln in enumerate(_text(root / "manifest.jsonl").splitlines()):
            if ln.strip():
                rec, why = json_value(ln)  # nesting and repeated keys limited: one line, not a traceback
                where, item = f"{root}/manifest.jsonl:{i + 1}", str(root / "manifest.jsonl")
                if why is not None:
                    raise LcdError(f"{where}: {why}", item=item)
                if not isinstance(rec, dict):
                    raise LcdError(f"{where}: must be a JSON object, got {kind(rec)}", item=item)
                if "image" not in rec:
                    raise LcdError(f"{where}: no 'image' field", item=item)
                if not isinstance(rec["image"], str) or not isinstance(rec.get("caption") or "", str):
                    raise LcdError(f"{where}: 'image' and 'caption' must be strings", item=item)
                pairs.append((_under(root, rec["image"]), rec.get("caption") or default_caption))
    else:
        for f in image_files(root):
            side = f.with_suffix(".txt")
            pairs.append((f, _text(side, "caption file").strip() if side.exists() else default_caption))
    if not pairs:
        raise InputImageError(f"{root}: regularization set has no images", item=str(root))
    return pairs


def _text(path: Path, what: str = "listing") -> str:
    """A listing's or caption's text; not UTF-8 (a binary or UTF-16 file) is one LcdError line naming it."""
    from lcd.io.documents import read_text_file

    return read_text_file(path, what, 1 << 30)


def _under(root: Path, p: str) -> Path:
    q = Path(p)
    return q if q.is_absolute() else root / q


def resize_square(img: np.ndarray, size: int) -> np.ndarray:
    """Center-crop to a square and resize to (size, size, 3) uint8 (Lanczos)."""
    h, w = img.shape[:2]
    s = min(h, w)
    y, x = (h - s) // 2, (w - s) // 2
    crop = Image.fromarray(img[y : y + s, x : x + s])
    return np.asarray(crop.resize((size, size), Image.LANCZOS))


def at_size(examples: Sequence[Example], size: int) -> list[Example]:
    """Examples center-cropped and resized to (size, size) once, before training: `augment`
    starts from `resize_square`, which is a plain copy for an image already at that size, so the
    result is the same while each step no longer resamples the full-size photo."""
    return [replace(e, image=resize_square(e.image, size), original_size=e.original_size or e.image.shape[:2],
                    crop_top_left=e.crop_top_left if e.original_size else _center_crop(e.image.shape[:2], size))
            for e in examples]


def _center_crop(hw: tuple[int, int], size: int) -> tuple[int, int]:
    """Top-left of `resize_square`'s crop in the frame whose shorter side is `size` (diffusers'
    crop_top_left after Resize(size) + CenterCrop(size))."""
    h, w = hw
    s = min(h, w)
    return int(round((h - s) // 2 * size / s)), int(round((w - s) // 2 * size / s))


def time_ids(ex: Example, size: int, zoom_offset: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """SDXL's (6,) float32 conditioning of one training crop: original (h, w), crop (y, x), (size, size)."""
    h, w = ex.original_size or ex.image.shape[:2]
    y, x = ex.crop_top_left
    return np.array([h, w, y + round(zoom_offset[0]), x + round(zoom_offset[1]), size, size], np.float32)


def augment(
    img: np.ndarray, caption: str, size: int, rng: np.random.Generator, *,
    scale_range: tuple[float, float] = (0.4, 1.4), flip_p: float = 0.5, rescale: bool = True, factor: int = 8,
) -> tuple[np.ndarray, np.ndarray, str]:
    """Custom Diffusion's augmentation, reimplemented from the paper's description.

    The photo is rescaled by a random factor: shrunk, it sits at a random place on a blank canvas
    and only its area counts in the loss; enlarged, a random crop is taken. Strong shrinks add
    'a far away'/'very small' to the caption, strong zooms 'zoomed in'/'close up', so the model
    ties scale to words instead of to the concept. `factor` is the VAE's latent factor f (8 for
    SD). Returns (image (3, S, S) float32 in [-1, 1], mask (1, S/f, S/f) float32, caption).
    """
    return _augment(img, caption, size, rng, scale_range=scale_range, flip_p=flip_p, rescale=rescale,
                    factor=factor)[:3]


def _augment(img, caption, size, rng, *, scale_range, flip_p, rescale, factor):
    """`augment`, plus the zoom crop's top-left in the un-zoomed frame ((0, 0) when not cropped)."""
    offset = (0.0, 0.0)
    base = resize_square(img, size)
    if rng.random() < flip_p:
        base = base[:, ::-1]
    lat = size // factor
    mask = np.ones((1, lat, lat), np.float32)
    if rescale:
        scale = float(rng.uniform(*scale_range))
        # sizes in whole latent cells so the mask matches the image exactly
        cells = max(1, int(round(lat * scale)))
        new = cells * factor
        resized = np.asarray(Image.fromarray(np.ascontiguousarray(base)).resize((new, new), Image.BICUBIC))
        if new < size:
            canvas = np.zeros((size, size, 3), np.uint8)
            cy, cx = (int(v) for v in rng.integers(0, lat - cells + 1, size=2))
            canvas[cy * factor : cy * factor + new, cx * factor : cx * factor + new] = resized
            mask[:] = 0.0
            mask[:, cy : cy + cells, cx : cx + cells] = 1.0
            base = canvas
            if scale < 0.6:
                caption = f"{SMALL_WORDS[int(rng.integers(len(SMALL_WORDS)))]} {caption}"
        else:
            y, x = (int(v) for v in rng.integers(0, new - size + 1, size=2))
            base = resized[y : y + size, x : x + size]
            offset = (y * size / new, x * size / new)
            if scale > 1.2:
                caption = f"{LARGE_WORDS[int(rng.integers(len(LARGE_WORDS)))]} {caption}"
    x = np.ascontiguousarray(base).astype(np.float32).transpose(2, 0, 1) / 127.5 - 1.0
    return x, mask, caption, offset


def sample_batch(
    examples: Sequence[Example], n: int, size: int, rng: np.random.Generator, *,
    augmented: bool, scale_range=(0.4, 1.4), flip_p: float = 0.5, factor: int = 8,
) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
    """n random examples -> (images (n, 3, S, S), masks (n, 1, S/f, S/f), captions, SDXL time ids
    (n, 6)); f = `factor`."""
    idx = rng.integers(0, len(examples), size=n)
    outs = [
        _augment(examples[i].image, examples[i].caption, size, rng, scale_range=scale_range, flip_p=flip_p,
                 rescale=augmented, factor=factor)
        for i in idx
    ]
    ids = np.stack([time_ids(examples[i], size, o[3]) for i, o in zip(idx, outs)])
    return np.stack([o[0] for o in outs]), np.stack([o[1] for o in outs]), [o[2] for o in outs], ids


def generate_class_images(pipe, prompt: str, n: int, out_dir: str | Path, *, steps: int, guidance: float,
                          size: int, seed: int = 0) -> list[Example]:
    """Generate (or reuse) n class images of `prompt` with the base model, cached as PNGs.

    Image i uses seed `seed + i`, so an interrupted generation resumes where it stopped and a
    cache is reused only for the same prompt/size/steps (the folder name should encode them)."""
    import torch

    from lcd.io.images import save_png
    from lcd.progress import Progress

    out = Path(out_dir)
    examples = []
    cached = sum((out / f"{i:05d}.png").exists() for i in range(n))
    progress = Progress(f"class images ({cached} cached)" if cached else "class images", n - cached, unit="images")
    for i in range(n):
        path = out / f"{i:05d}.png"
        if not path.exists():
            g = torch.Generator("cpu").manual_seed(seed + i)
            img = pipe(prompt, num_inference_steps=steps, guidance_scale=guidance, height=size, width=size,
                       generator=g, output_type="np").images[0]
            save_png(path, (img * 255).round().astype(np.uint8), {"prompt": prompt, "seed": seed + i, "steps": steps})
            progress.advance()
        examples.append(Example(load_image(path), prompt, str(path)))
    progress.close()
    return examples
