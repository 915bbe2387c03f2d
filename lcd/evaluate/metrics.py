"""Pure metric math on embeddings and image arrays (no model loading here).

Definitions (the ones the tables report):
- CLIP-T: cosine(CLIP image embedding of the edit, CLIP text embedding of its prompt with the
  concept token replaced by the class word), raw cosine in [-1, 1] as published tables (~0.30 for
  SD1.5-scale models). Custom Diffusion's code reports 2.5 * cos; `scale=2.5` reproduces that.
- CLIP-I / DINO-I: mean over the concept's photos of cosine(embedding of the edit, embedding of
  the photo). CLIP uses the projected image embedding, DINO the ViT-S/16 [CLS] token.
- MS-SSIM: Wang et al. 2003 on RGB in [0, 255] (Gaussian window 11, sigma 1.5, K=(0.01, 0.03),
  weights (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)), edit vs reference, averaged over channels.
  Five scales need min(H, W) > 160; smaller images use fewer scales (see `ms_ssim`).
Non-finite values (PSNR of identical images is +inf) stay floats in Python; `json_safe` writes
them as the strings "inf" / "-inf" / "nan" because JSON has no literal for them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lcd.errors import LcdError

MSSSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
SSIM_K = (0.01, 0.03)
WIN_SIZE, WIN_SIGMA = 11, 1.5


# --- embeddings --------------------------------------------------------------------------------

def cosine_matrix(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> np.ndarray:
    """(N, D) x (M, D) -> (N, M) float64 cosine similarities. Zero vectors are an error."""
    a64, b64 = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a64.ndim != 2 or b64.ndim != 2 or a64.shape[1] != b64.shape[1]:
        raise LcdError(f"embeddings must be (N, D) and (M, D) with equal D, got {a64.shape} and {b64.shape}",
                       item="embeddings")
    na, nb = np.linalg.norm(a64, axis=1, keepdims=True), np.linalg.norm(b64, axis=1, keepdims=True)
    if (na == 0).any() or (nb == 0).any():
        raise LcdError("an embedding has zero norm; cosine is undefined", item="embeddings")
    return (a64 / na) @ (b64 / nb).T


def clip_t(image_emb, text_emb, scale: float = 1.0) -> np.ndarray:
    """Paired CLIP-T: row i of (N, D) image embeddings against row i of (N, D) text embeddings -> (N,).

    scale=1.0 gives the raw cosine of published tables; 2.5 gives Custom Diffusion's code's number.
    """
    ia, ta = np.asarray(image_emb), np.asarray(text_emb)
    if ia.shape != ta.shape:
        raise LcdError(f"CLIP-T pairs image i with text i: shapes {ia.shape} and {ta.shape} differ", item="embeddings")
    return scale * np.einsum("nd,nd->n", _unit(ia), _unit(ta))


def identity_similarity(edit_emb, concept_emb) -> np.ndarray:
    """CLIP-I / DINO-I: (N, D) edits vs (M, D) concept photos -> (N,) mean cosine over the M photos."""
    return cosine_matrix(edit_emb, concept_emb).mean(axis=1)


def _unit(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    if (n == 0).any():
        raise LcdError("an embedding has zero norm; cosine is undefined", item="embeddings")
    return x / n


# --- SSIM family -------------------------------------------------------------------------------

def to_tensor(img: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W) float64 in [0, 255]."""
    if not (isinstance(img, np.ndarray) and img.ndim == 3 and img.shape[2] == 3):
        raise LcdError(f"image must be (H, W, 3), got {getattr(img, 'shape', type(img).__name__)}", item="image")
    return torch.from_numpy(np.array(img)).to(torch.float64).permute(2, 0, 1)[None]


def _gauss(size: int = WIN_SIZE, sigma: float = WIN_SIGMA, dtype=torch.float64) -> torch.Tensor:
    x = torch.arange(size, dtype=dtype) - size // 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _blur(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian, 'valid' padding (the map shrinks by size-1 on each axis), per channel."""
    c = x.shape[1]
    x = F.conv2d(x, g.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(x, g.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def ssim_maps(x: torch.Tensor, y: torch.Tensor, data_range: float = 255.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C, H, W) pair -> (ssim map, contrast-structure map), each (N, C, H-10, W-10).

    Map pixel (i, j) is the window centred on input pixel (i + 5, j + 5).
    """
    g = _gauss(dtype=x.dtype)
    c1, c2 = (SSIM_K[0] * data_range) ** 2, (SSIM_K[1] * data_range) ** 2
    mx, my = _blur(x, g), _blur(y, g)
    sxx = _blur(x * x, g) - mx * mx
    syy = _blur(y * y, g) - my * my
    sxy = _blur(x * y, g) - mx * my
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    return ((2 * mx * my + c1) / (mx * mx + my * my + c1)) * cs, cs


def msssim_levels(side: int, win_size: int = WIN_SIZE) -> int:
    """How many scales fit: level L needs the side after L-1 halvings to exceed the window."""
    levels = 0
    while levels < len(MSSSIM_WEIGHTS) and side > (win_size - 1) * 2**levels:
        levels += 1
    return levels


def ms_ssim(a: np.ndarray, b: np.ndarray, *, small: str = "fewer_scales") -> tuple[float, int]:
    """MS-SSIM of two (H, W, 3) uint8 images -> (value, scales used).

    min(H, W) > 160: the standard 5 scales through pytorch_msssim (the reference implementation).
    Smaller: small="fewer_scales" uses the L scales that fit with the first L weights renormalised
    (64 px -> 3 scales; not comparable with 5-scale numbers, hence the count is returned);
    small="error" raises. Fewer than 1 scale (side <= 10) always raises.
    """
    if a.shape != b.shape:
        raise LcdError(f"MS-SSIM needs equal shapes, got {a.shape} and {b.shape}", item="image")
    side = min(a.shape[:2])
    levels = msssim_levels(side)
    if levels == len(MSSSIM_WEIGHTS):
        from pytorch_msssim import ms_ssim as _ref

        return float(_ref(to_tensor(a), to_tensor(b), data_range=255.0, win_size=WIN_SIZE)), levels
    if small == "error" or levels == 0:
        raise LcdError(
            f"MS-SSIM with 5 scales needs images larger than 160 px per side, got {a.shape[1]}x{a.shape[0]}"
            + ("" if levels else " (too small for even one scale)")
            + (": set evaluate.msssim_small: fewer_scales" if levels else ""),
            item="image",
        )
    return ms_ssim_levels(a, b, levels), levels


def ms_ssim_levels(a: np.ndarray, b: np.ndarray, levels: int) -> float:
    """MS-SSIM over the first `levels` scales, weights renormalised to sum 1 (pure torch)."""
    w = torch.tensor(MSSSIM_WEIGHTS[:levels], dtype=torch.float64)
    w = w / w.sum()
    x, y = to_tensor(a), to_tensor(b)
    vals = []
    for i in range(levels):
        s, cs = ssim_maps(x, y)
        last = i == levels - 1
        vals.append(torch.relu((s if last else cs).flatten(2).mean(-1)))  # (N, C)
        if not last:
            pad = [x.shape[2] % 2, x.shape[3] % 2]  # pytorch_msssim's convention for odd sides
            x, y = F.avg_pool2d(x, 2, padding=pad), F.avg_pool2d(y, 2, padding=pad)
    stack = torch.stack(vals, dim=0)  # (L, N, C)
    return float(torch.prod(stack ** w.view(-1, 1, 1), dim=0).mean())


# --- PSNR and JSON -----------------------------------------------------------------------------

def psnr_from_mse(mse: float, data_range: float = 255.0) -> float:
    """10 log10(R^2 / MSE); MSE == 0 -> +inf (identical), reported as such (not capped)."""
    if mse < 0 or math.isnan(mse):
        raise LcdError(f"MSE must be >= 0, got {mse}", item="mse")
    return math.inf if mse == 0 else 10.0 * math.log10(data_range**2 / mse)


def json_safe(x: Any) -> Any:
    """Recursively make a value JSON-safe: +inf/-inf/nan floats -> "inf"/"-inf"/"nan" strings,
    numpy scalars -> Python numbers. `json.dumps(..., allow_nan=False)` then succeeds."""
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    return x


def mean_finite_aware(values: list[float]) -> float:
    """Mean that stays +inf when any value is +inf (e.g. PSNR over a set with identical pairs)."""
    if not values:
        return math.nan
    return float(np.mean(np.asarray(values, dtype=np.float64)))
