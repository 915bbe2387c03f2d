"""The paper's ablations, as tables.

- Table 2, K/V vs all layers: trainable parameters counted on the UNet itself (pure function of the
  module names) and training time taken as an input (seconds measured by the training runs).
- Table 3, region selection: edit each scene with no region (the whole image), a text-predicted
  region and the SAM region; score background LPIPS/PSNR outside the SAM (reference) region.
  Region providers are inputs (callables), so a text-to-region predictor plugs in when it exists.
- Table 4, with vs without the concept token: two protocol methods over the same concept
  provider (`token_ablation_methods`), tabulated by `protocol.run_protocol`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

from lcd.edit.config import EditConfig
from lcd.edit.engine import EditItem, edit_images
from lcd.errors import LcdError
from lcd.evaluate.background import LpipsModel, masked_lpips, masked_mse
from lcd.evaluate.metrics import mean_finite_aware, psnr_from_mse
from lcd.evaluate.protocol import ConceptProvider, Method
from lcd.models.loader import LoadedPipeline

KV_SUFFIXES = ("attn2.to_k.weight", "attn2.to_v.weight")


def kv_vs_all_table(
    unet, *, timings_s: Mapping[str, float] | None = None, new_tokens: int = 1, token_dim: int | None = None
) -> list[dict]:
    """Rows for K/V-only (cross-attention to_k/to_v weights + new token rows) vs all UNet parameters.

    token_dim: width of the text embedding (SD1.5: 768) — each new token adds one row (counted in
    trainable_params, not in fraction_of_unet, which is UNet weights trained / UNet weights).
    timings_s: {"kv": s, "all": s} from training runs (absent -> the column is None).
    """
    named = dict(unet.named_parameters())
    kv = sum(p.numel() for n, p in named.items() if n.endswith(KV_SUFFIXES))
    if kv == 0:
        raise LcdError("no cross-attention K/V weights (attn2.to_k / attn2.to_v) in this UNet", item="unet")
    total = sum(p.numel() for p in named.values())
    tok = new_tokens * (token_dim or 0)
    timings_s = timings_s or {}
    return [
        {"setting": "kv", "trainable_params": kv + tok, "fraction_of_unet": kv / total,
         "time_s": timings_s.get("kv")},
        {"setting": "all", "trainable_params": total + tok, "fraction_of_unet": 1.0,
         "time_s": timings_s.get("all")},
    ]


RegionProvider = Callable[[np.ndarray, np.ndarray, str], np.ndarray]  # (image, sam mask, prompt) -> (H, W) bool


def whole_image(image: np.ndarray, sam_mask: np.ndarray, prompt: str) -> np.ndarray:
    """'No region selection': the edit may change the whole image."""
    return np.ones(image.shape[:2], bool)


def sam_region(image: np.ndarray, sam_mask: np.ndarray, prompt: str) -> np.ndarray:
    """The SAM region given with the scene."""
    return sam_mask.astype(bool)


@dataclass
class Scene:
    name: str
    image: np.ndarray  # (H, W, 3) uint8
    sam_mask: np.ndarray  # (H, W) bool: the region the concept belongs in (reference for scoring)
    prompt: str


def region_ablation(
    lp: LoadedPipeline, scenes: Sequence[Scene], providers: Mapping[str, RegionProvider], edit_cfg: EditConfig,
    lpips_model: LpipsModel | None, seeds: Sequence[int] = (0,),
) -> list[dict]:
    """Table 3: per region mode, mean background LPIPS / PSNR outside the SAM region.

    Typical providers: {"none": whole_image, "text": <text-predicted region>, "sam": sam_region}.
    """
    if not providers or not scenes:
        raise LcdError("region_ablation needs at least one provider and one scene", item="region_ablation")
    rows = []
    for mode, provide in providers.items():
        items, refs = [], []
        for sc in scenes:
            mask = np.asarray(provide(sc.image, sc.sam_mask, sc.prompt), dtype=bool)
            if mask.shape != sc.image.shape[:2]:
                raise LcdError(f"{sc.name}: region provider {mode!r} returned {mask.shape}, image is {sc.image.shape[:2]}",
                               item=sc.name)
            for s in seeds:
                items.append(EditItem(sc.image, mask, sc.prompt, s, f"{sc.name}-{mode}-s{s}"))
                refs.append(sc)
        results = edit_images(lp, items, edit_cfg)
        lp_vals = [masked_lpips(lpips_model, r.image, sc.image, sc.sam_mask, sc.name) for r, sc in zip(results, refs)] \
            if lpips_model is not None else []
        mses = [masked_mse(r.image, sc.image, sc.sam_mask, sc.name) for r, sc in zip(results, refs)]
        rows.append({"region": mode, "n": len(items), "bg_lpips": mean_finite_aware(lp_vals) if lp_vals else None,
                     "bg_psnr": mean_finite_aware([psnr_from_mse(m) for m in mses])})
    return rows


def token_ablation_methods(concept: ConceptProvider, prefix: str = "") -> list[Method]:
    """Table 4: the same trained concept prompted with its token and with the class word only."""
    return [Method(f"{prefix}with-token", concept=concept), Method(f"{prefix}without-token", concept=concept, use_token=False)]
