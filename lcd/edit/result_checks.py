"""Is what the model gave an image? Checked per item before the shard records it "edited".

A broken model or concept does not raise: NaN flows through the UNet and the VAE, `clamp` keeps
it, and the uint8 cast turns it into 0, so the region comes out solid black and the row said
`edited`. A saturated update (finite but huge weights) gives one colour instead. Both are caught
here, on the batch's tensors, before the cast.

The constant rule is chosen not to misfire: it fires only when every pixel of the region at
working size (dilation and feather ring included) has one colour while the input's region had
more than one, and the region holds at least MIN_REGION_PX pixels. The feather ring is blended
from the input's latents, so even a flat generated object varies there; tiny random models give
noise; an input that was flat (a black test image) is never judged.
"""

from __future__ import annotations

import numpy as np
import torch

from lcd.errors import LcdError

MIN_REGION_PX = 64


class EditResultError(LcdError):
    """The model's output for an item is not an image: NaN or inf in its latents or pixels, or one
    colour over a region that was not. Recorded as that item's failure, never as `edited`."""


def nonfinite_problem(name: str, latents: torch.Tensor, pixels: torch.Tensor) -> EditResultError | None:
    """One item's final latents (C, h, w) and decoded pixels (3, H, W) -> the error, or None."""
    for what, t in (("latents", latents), ("decoded pixels", pixels)):
        if not bool(torch.isfinite(t).all()):
            kind = "NaN" if bool(torch.isnan(t).any()) else "inf"
            return EditResultError(f"{name}: the edit produced {kind} in the {what}; the model or the concept "
                                   "is broken, nothing was saved", item=name)
    return None


def constant_problem(name: str, crop: np.ndarray, source: np.ndarray, region: np.ndarray) -> EditResultError | None:
    """The generated crop (S, S, 3) uint8 against the input crop (S, S, 3) uint8 inside `region`
    (S, S) bool -> the error when the output is one colour there and the input was not, or None."""
    if int(region.sum()) < MIN_REGION_PX:
        return None
    out, src = crop[region], source[region]
    if not (out == out[0]).all() or (src == src[0]).all():
        return None
    return EditResultError(f"{name}: the edit produced a constant region (every pixel {tuple(int(v) for v in out[0])}) "
                           "from a region that was not; the model or the concept is broken, nothing was saved",
                           item=name)


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """(3, H, W) float in [0, 1] -> (H, W, 3) uint8; non-finite values become 0 (only for an item
    already failed by nonfinite_problem, so the cast does not warn)."""
    x = torch.nan_to_num(pixels.float(), nan=0.0, posinf=1.0, neginf=0.0).permute(1, 2, 0).numpy()
    return (x * 255.0).round().astype(np.uint8)
