"""Background preservation: how much an edit changed the region it should not have touched.

Convention (a hybrid, chosen so that the masked region is ignored *entirely* and the score does
not depend on how big the mask is):
- Pixel metrics average over the unmasked pixels only, as BrushBench does (divide by the count of
  unmasked pixels x 3 channels). PIE-Bench instead multiplies both images by (1 - mask) and
  averages over the whole image: its masked pixels count as perfect matches, so the same
  background damage scores better the larger the mask. We did not take that.
- Windowed / deep metrics (SSIM, LPIPS) see neighbourhoods that cross the mask boundary. There we
  first zero the masked region in both images (PIE-Bench's multiplication), so nothing inside the
  mask can leak into a background score, then average the SSIM / LPIPS *map* over the unmasked
  pixels only (BrushBench's normalisation).
Hence changing pixels only inside the mask leaves every background number exactly unchanged.
  MSE  = sum_{unmasked, c} (a - b)^2 / (3 * #unmasked), images in [0, 255]
  PSNR = 10 log10(255^2 / MSE), +inf when MSE == 0
  SSIM = mean over unmasked centre pixels of the 11x11 Gaussian SSIM map of (a*(1-m), b*(1-m))
  LPIPS = mean over unmasked pixels of lpips' spatial map of (a*(1-m), b*(1-m)), inputs in [-1, 1]
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lcd.errors import LcdError, ModelLoadError
from lcd.evaluate.metrics import psnr_from_mse, ssim_maps, to_tensor, WIN_SIZE

LPIPS_NETS = ("alex", "vgg")


def check_pair(a: np.ndarray, b: np.ndarray, mask: np.ndarray, name: str = "item") -> np.ndarray:
    """Validate (H, W, 3) uint8 pair + (H, W) bool mask; return the background (H, W) bool."""
    for arg, x in (("edit", a), ("reference", b)):
        if not (isinstance(x, np.ndarray) and x.ndim == 3 and x.shape[2] == 3):
            raise LcdError(f"{name}: {arg} must be (H, W, 3), got {getattr(x, 'shape', type(x).__name__)}", item=name)
    if a.shape != b.shape:
        raise LcdError(f"{name}: edit is {a.shape} but reference is {b.shape}; they must match", item=name)
    if mask.shape != a.shape[:2]:
        raise LcdError(f"{name}: mask is {mask.shape} but images are {a.shape[:2]}; they must match", item=name)
    bg = ~mask.astype(bool)
    if not bg.any():
        raise LcdError(f"{name}: mask covers the whole image; there is no background to measure", item=name)
    return bg


def masked_mse(a: np.ndarray, b: np.ndarray, mask: np.ndarray, name: str = "item") -> float:
    bg = check_pair(a, b, mask, name)
    d = a.astype(np.float64)[bg] - b.astype(np.float64)[bg]
    return float((d * d).mean())


def masked_psnr(a, b, mask, name: str = "item") -> float:
    return psnr_from_mse(masked_mse(a, b, mask, name))


def masked_ssim(a, b, mask, name: str = "item") -> float:
    bg = check_pair(a, b, mask, name)
    if min(a.shape[:2]) < WIN_SIZE:
        raise LcdError(f"{name}: SSIM needs images of at least {WIN_SIZE} px per side, got {a.shape[:2]}", item=name)
    keep = torch.from_numpy(bg)[None, None]
    s, _ = ssim_maps(to_tensor(a) * keep, to_tensor(b) * keep)
    r = WIN_SIZE // 2
    centre = keep[..., r:-r, r:-r]
    if not centre.any():
        raise LcdError(f"{name}: no unmasked pixel is at least {r} px from the image border", item=name)
    return float(s.mean(dim=1, keepdim=True)[centre].mean())


@dataclass
class LpipsModel:
    """An lpips.LPIPS (spatial) network and where its weights came from (recorded in results)."""

    net: Any
    backbone: str  # "random" or the weights file
    linear: str  # "lpips-package-v0.1" or the weights file

    @property
    def comparable(self) -> bool:
        """Numbers are comparable with published LPIPS only with real backbone weights."""
        return self.backbone != "random"


def load_lpips(net: str = "alex", backbone: str = "random", linear: str | None = None, device="cpu") -> LpipsModel:
    """Build lpips' LPIPS without any download.

    backbone: a torchvision state dict of `alexnet` / `vgg16` (e.g. alexnet-owt-7be5be79.pth) whose
    `features.N.*` tensors are copied into lpips' slices; "random" keeps a random backbone (tests;
    numbers then only rank, they are not LPIPS). linear: lpips' linear-layer file, default the v0.1
    weights shipped inside the lpips package.
    """
    if net not in LPIPS_NETS:
        raise ModelLoadError(f"evaluate.lpips_net must be one of {LPIPS_NETS}, got {net!r}", item="lpips_net")
    import lpips  # optional dependency, imported when LPIPS is asked for

    if backbone != "random" and not Path(backbone).is_file():
        raise ModelLoadError(f"{backbone}: LPIPS backbone weights not found (or use 'random')", item=backbone)
    if linear is not None and not Path(linear).is_file():
        raise ModelLoadError(f"{linear}: LPIPS linear weights not found", item=linear)
    with warnings.catch_warnings():  # torchvision's 'pretrained' deprecation, from inside lpips
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, spatial=True, model_path=linear, verbose=False)
    if backbone != "random":
        _load_backbone(model.net, backbone)
    return LpipsModel(model.to(device).eval(), backbone, linear or "lpips-package-v0.1")


def _load_backbone(pnet, path: str) -> None:
    """Copy torchvision `features.N.<param>` tensors into lpips' `sliceK.N.<param>` (same index N)."""
    from lcd.io.torchfile import load_weights

    state = load_weights(path, "LPIPS backbone weights")  # a refused pickle: one line naming the file
    if not isinstance(state, dict):
        raise ModelLoadError(f"{path}: LPIPS backbone weights must be a state dict, got a {type(state).__name__}",
                             item=path)
    target = pnet.state_dict()
    new = {}
    for key in target:
        src = "features." + key.split(".", 1)[1]
        if src not in state:
            raise ModelLoadError(f"{path}: missing {src} for LPIPS backbone (is it a torchvision alexnet/vgg16?)", item=path)
        if state[src].shape != target[key].shape:
            raise ModelLoadError(
                f"{path}: {src} has shape {tuple(state[src].shape)}, LPIPS expects {tuple(target[key].shape)}", item=path
            )
        new[key] = state[src]
    pnet.load_state_dict(new)


@torch.no_grad()
def masked_lpips(model: LpipsModel, a, b, mask, name: str = "item") -> float:
    bg = check_pair(a, b, mask, name)
    keep = torch.from_numpy(bg)[None, None].float()
    dev = next(model.net.parameters()).device
    x = (to_tensor(a).float() / 127.5 - 1.0) * keep
    y = (to_tensor(b).float() / 127.5 - 1.0) * keep
    m = model.net(x.to(dev), y.to(dev))  # (1, 1, H, W): lpips upsamples its spatial map to input size
    return float(m.cpu()[keep.bool()].mean())


def background_metrics(a, b, mask, lpips_model: LpipsModel | None = None, name: str = "item") -> dict[str, float]:
    """All background numbers for one (edit, reference, mask) triple."""
    out = {
        "bg_mse": masked_mse(a, b, mask, name),
        "bg_ssim": masked_ssim(a, b, mask, name),
    }
    out["bg_psnr"] = psnr_from_mse(out["bg_mse"])
    if lpips_model is not None:
        out["bg_lpips"] = masked_lpips(lpips_model, a, b, mask, name)
    return out
