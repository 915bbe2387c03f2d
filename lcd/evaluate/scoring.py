"""Score a batch of edits with every metric: the shared core of `lcd evaluate` and the protocol.

Input per edit: the edited image, its reference (the unedited scene), the edit mask, the text for
CLIP-T (concept token already replaced by the class word) and the id of the concept whose photos
CLIP-I / DINO-I compare against. Output: one flat dict of numbers per edit (floats; +inf allowed).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from lcd.masks.morphology import dilate
from lcd.errors import LcdError
from lcd.evaluate import metrics as M
from lcd.evaluate.background import LpipsModel, background_metrics
from lcd.evaluate.config import EvaluateConfig
from lcd.evaluate.embedders import Embedders
from lcd.progress import Progress

METRICS = ("clip_t", "clip_i", "dino_i", "ms_ssim", "bg_psnr", "bg_ssim", "bg_mse", "bg_lpips")
HIGHER_IS_BETTER = {"clip_t": True, "clip_i": True, "dino_i": True, "ms_ssim": True, "bg_psnr": True,
                    "bg_ssim": True, "bg_mse": False, "bg_lpips": False}


@dataclass
class EditRecord:
    """One edit to score. edit/reference (H, W, 3) uint8, mask (H, W) bool (True = edited region)."""

    name: str
    edit: np.ndarray
    reference: np.ndarray
    mask: np.ndarray
    text: str  # CLIP-T text: prompt with the concept token replaced by the class word
    concept: str  # key into the concept photo table


def clip_t_text(prompt: str, class_word: str | None) -> str:
    """The CLIP-T text: 'a [P] dog on the beach' -> 'a dog on the beach'; a token not followed by
    the class word becomes the class word ('photo of [P]' -> 'photo of dog'); without a class
    word the token is dropped."""
    from lcd.concepts.tokens import CONCEPT_TOKEN

    if not class_word:
        return " ".join(CONCEPT_TOKEN.sub("", prompt).split())
    out = re.sub(CONCEPT_TOKEN.pattern + r"\s+" + re.escape(class_word) + r"\b", class_word, prompt)
    return " ".join(CONCEPT_TOKEN.sub(class_word, out).split())


def mask_box(img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Crop (H, W, 3) to the bounding box of a non-empty (H, W) mask."""
    ys, xs = np.nonzero(mask)
    return img[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]


class ConceptTable:
    """CLIP and DINO embeddings of each concept's photos, computed once per concept."""

    def __init__(self, emb: Embedders, photos: Mapping[str, Sequence[np.ndarray]]):
        self.clip: dict[str, np.ndarray] = {}
        self.dino: dict[str, np.ndarray] = {}
        for key, ims in photos.items():
            if not ims:
                raise LcdError(f"concept {key!r} has no photos to compare against", item=key)
            self.clip[key] = emb.clip_images(list(ims))
            self.dino[key] = emb.dino_images(list(ims))


def score_edits(
    records: Sequence[EditRecord], concepts: ConceptTable, emb: Embedders, lpips_model: LpipsModel | None,
    cfg: EvaluateConfig, failures: list[dict] | None = None,
) -> list[dict]:
    """-> one dict per scored record: name, every metric in METRICS (bg_lpips when a model is
    given), msssim_scales. With a `failures` list, a record that cannot be scored (empty mask,
    image too small for a metric, ...) is appended there as {item, error} and skipped; without
    one, the first such record raises."""

    def reject(r: EditRecord, err: LcdError) -> None:
        if failures is None:
            raise err
        failures.append({"item": r.name, "error": str(err)})

    # 1. check inputs (errors name the record)
    good = []
    for r in records:
        if r.concept not in concepts.clip:
            reject(r, LcdError(f"{r.name}: unknown concept {r.concept!r} (have {sorted(concepts.clip)})", item=r.name))
        elif not r.mask.any() or r.mask.all():
            reject(r, LcdError(f"{r.name}: mask is empty or covers the whole image", item=r.name))
        else:
            good.append(r)
    records = good
    if not records:
        return []
    # 2. embeddings, batched over all records
    views = [mask_box(r.edit, r.mask) if cfg.identity_region == "mask_box" else r.edit for r in records]
    img_clip = emb.clip_images([r.edit for r in records])
    txt_clip = emb.clip_texts([r.text for r in records])
    id_clip = img_clip if cfg.identity_region == "full" else emb.clip_images(views)
    id_dino = emb.dino_images(views)
    clip_t = M.clip_t(img_clip, txt_clip, scale=cfg.clip_t_scale)
    # 3. per-record pixel metrics
    rows = []
    progress = Progress("evaluate metrics", len(records), unit="edits")
    for i, r in enumerate(records):
        try:
            msssim, scales = M.ms_ssim(r.edit, r.reference, small=cfg.msssim_small)
            bg_mask = dilate(r.mask, cfg.background_exclude_px) if cfg.background_exclude_px else r.mask
            bg = background_metrics(r.edit, r.reference, bg_mask, lpips_model, name=r.name)
        except LcdError as e:
            reject(r, LcdError(f"{r.name}: {e}", item=r.name))
            progress.advance()
            continue
        row = {
            "name": r.name,
            "clip_t": float(clip_t[i]),
            "clip_i": float(M.identity_similarity(id_clip[i : i + 1], concepts.clip[r.concept])[0]),
            "dino_i": float(M.identity_similarity(id_dino[i : i + 1], concepts.dino[r.concept])[0]),
            "ms_ssim": msssim,
            "msssim_scales": scales,
        }
        row.update(bg)
        rows.append(row)
        progress.advance()
    progress.close()
    return rows


def summarize(rows: Sequence[dict], by: Sequence[str] = ("method",)) -> list[dict]:
    """Mean of each metric per group (e.g. per method): [{method:..., n:..., clip_t:..., ...}].

    A group whose PSNR includes +inf (an untouched background) has mean +inf: reported, not hidden.
    """
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in by), []).append(r)
    out = []
    for key, rs in groups.items():
        entry = dict(zip(by, key)) | {"n": len(rs)}
        for m in METRICS:
            vals = [r[m] for r in rs if m in r]
            if vals:
                entry[m] = M.mean_finite_aware(vals)
        out.append(entry)
    return out
