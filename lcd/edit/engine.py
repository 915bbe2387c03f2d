"""Batched local edits: crop around each mask, denoise at working size, paste back at full size.

`edit_images` is the library entry point. It takes in-memory items (image arrays, bool masks,
prompts, seeds) and a loaded pipeline, and returns edited arrays plus the metadata that
reproduces them. Files are read and written by callers (CLI, tasks), not here.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import lcd
from lcd.concepts.tokens import CONCEPT_TOKEN, check_prompt
from lcd.edit import region
from lcd.edit.config import EXECUTION_ONLY, EditConfig
from lcd.edit.items import EditItem, EditResult  # noqa: F401 - re-exported: the public names
from lcd.edit.prompts import PromptCache, added_conditioning
from lcd.edit.sampler import SamplerSettings, decode_latents, denoise, encode_latents
from lcd.edit.speed import apply_speed_settings, resolve_batch_size
from lcd.edit.result_checks import EditResultError, constant_problem, nonfinite_problem, to_uint8
from lcd.errors import InputImageError, LcdError
from lcd.masks.morphology import feather_alpha
from lcd.models.loader import LoadedPipeline
from lcd.models.schedulers import build_scheduler, sampler_label, scheduler_class_name


def check_item(item: EditItem, known_tokens: Sequence[str], required_tokens: Sequence[str]) -> None:
    """Validate one item; errors name `item.name` (the diffusers `check_inputs` habit)."""
    img = item.image
    if not (isinstance(img, np.ndarray) and img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8):
        got = getattr(img, "shape", type(img).__name__)
        raise InputImageError(f"{item.name}: image must be (H, W, 3) uint8, got {got}", item=item.name)
    if item.mask.shape != img.shape[:2]:
        raise InputImageError(
            f"{item.name}: mask is {item.mask.shape[1]}x{item.mask.shape[0]} but the image is "
            f"{img.shape[1]}x{img.shape[0]}; they must match",
            item=item.name,
        )
    check_prompt(item.prompt, known_tokens, required_tokens, item=item.name)


def check_size(size: int, latent_factor: int) -> None:
    """The working size must divide into latent cells of this model's VAE."""
    if size % latent_factor:
        raise LcdError(f"edit.size {size} is not a multiple of this model's latent factor {latent_factor} "
                       "(its VAE downsamples by that much)", item="size")


def known_concept_tokens(tokenizer) -> list[str]:
    """`[NAME]` tokens added to the tokenizer by loaded concepts (special tokens excluded)."""
    return [t for t in tokenizer.get_added_vocab() if CONCEPT_TOKEN.fullmatch(t)]


def _prepare(item: EditItem, cfg: EditConfig):
    """-> (alpha, box, crop (S, S, 3) uint8, region at working size (S, S) bool)."""
    alpha = feather_alpha(item.mask, cfg.dilate_px, cfg.feather_px)
    box = region.crop_box(alpha, cfg.size, cfg.crop_margin)
    crop = region.extract(item.image, box)
    a_crop = region.extract(alpha, box)
    if box.side != cfg.size:
        crop = np.asarray(Image.fromarray(crop).resize((cfg.size, cfg.size), Image.LANCZOS))
        a_crop = np.asarray(Image.fromarray(a_crop).resize((cfg.size, cfg.size), Image.BILINEAR))
    return alpha, box, crop, a_crop > 0


def _to_tensor(batch: list[np.ndarray], device, dtype) -> torch.Tensor:
    x = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).to(torch.float32) / 255.0
    return (x * 2.0 - 1.0).to(device=device, dtype=dtype)


def initial_noise(seeds: Sequence[int], shape: tuple[int, int, int], device, dtype
                  ) -> tuple[torch.Tensor, list[torch.Generator]]:
    """Per-item noise from a CPU generator seeded with the item's seed -> (noise (B, *shape), the
    generators, which samplers that draw noise per step go on using). The same seed gives the same
    noise on any device and in any batch, and the same as diffusers' pipelines given
    `generator=[torch.Generator().manual_seed(seed)]`."""
    gens = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
    out = [torch.randn((1, *shape), generator=g) for g in gens]
    return torch.cat(out).to(device=device, dtype=dtype), gens


@torch.no_grad()
def _run_batch(lp: LoadedPipeline, prepared: list[Prepared], cfg: EditConfig, prompts: PromptCache
               ) -> list[np.ndarray | EditResultError]:
    """Denoise one batch of prepared (non-empty) items at working size; return (S, S, 3) uint8
    crops, or for an item whose result is broken (lcd.edit.result_checks) its EditResultError."""
    pipe = lp.pipe
    unet, vae = pipe.unet, pipe.vae
    device, dtype = unet.device, unet.dtype
    f = lp.latent_factor
    h = cfg.size // f
    items = [p.item for p in prepared]
    images = _to_tensor([p.crop for p in prepared], device, vae.dtype)
    regions = torch.from_numpy(np.stack([p.region for p in prepared]))[:, None].to(device=device, dtype=dtype)
    # the VAE may run in another dtype than the UNet (models.vae_dtype); latents follow the UNet
    image_latents = encode_latents(vae, images, cfg.vae_slice).to(dtype)
    # a latent cell is generated if any of its f x f pixels is in the region
    latent_mask = F.max_pool2d(regions, f)
    inpaint_cond = None
    if lp.is_inpaint_model:
        masked = encode_latents(vae, images * (regions < 0.5).to(images.dtype), cfg.vae_slice).to(dtype)
        inpaint_cond = torch.cat([F.interpolate(regions, size=(h, h)), masked], dim=1)
    # text encoders once per distinct prompt (and once for the negative prompt) per cache; SDXL
    # adds the pooled embedding and time ids of the working size (lcd.edit.prompts)
    cond, pooled = prompts.encode_pooled([it.prompt for it in items])
    uncond, uncond_pooled = prompts.negative(cfg.negative_prompt, len(items))
    added = added_conditioning(pipe, pooled, uncond_pooled, cfg.size, dtype)
    noise, generators = initial_noise([it.seed for it in items], (unet.config.out_channels, h, h), device, dtype)
    if cfg.channels_last:
        noise = noise.contiguous(memory_format=torch.channels_last)
    settings = SamplerSettings(cfg.steps, cfg.guidance, cfg.eta, cfg.blend_start, cfg.blend)
    latents = denoise(
        unet, build_scheduler(cfg.scheduler, pipe.scheduler.config), noise=noise, cond=cond.to(dtype),
        uncond=uncond.to(dtype), settings=settings, image_latents=image_latents, latent_mask=latent_mask,
        inpaint_cond=inpaint_cond, generators=generators, added_cond=added,
    )
    pixels = decode_latents(vae, latents, cfg.vae_slice).float().cpu()
    # 5. check each item's result before anything records it: NaN survives clamp and casts to black
    out: list[np.ndarray | EditResultError] = []
    for k, p in enumerate(prepared):
        crop = to_uint8(pixels[k])
        out.append(nonfinite_problem(p.item.name, latents[k], pixels[k])
                   or constant_problem(p.item.name, crop, p.crop, p.region) or crop)
    return out


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


def _run_split(lp: LoadedPipeline, prepared: list[Prepared], cfg: EditConfig,
               prompts: PromptCache) -> list[np.ndarray | Exception]:
    """`_run_batch`, made to fail item by item: when the accelerator runs out of memory, the two
    halves in turn (a batch size that is too big costs a retry, not the batch); when anything
    else raises, each item alone, so an item the model cannot take fails alone. An item that
    fails alone gets its exception (traceback dropped: its frames hold the batch's tensors) in
    place of its crop; finish_item raises it."""
    try:
        return _run_batch(lp, prepared, cfg, prompts)
    except Exception as e:  # noqa: BLE001 - torch.OutOfMemoryError is a RuntimeError
        if len(prepared) == 1:
            return [e.with_traceback(None)]
        oom = _is_oom(e)
    if not oom:
        return [x for p in prepared for x in _run_split(lp, [p], cfg, prompts)]
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    k = len(prepared) // 2
    return _run_split(lp, prepared[:k], cfg, prompts) + _run_split(lp, prepared[k:], cfg, prompts)


@dataclass
class Prepared:
    """One item made ready for the model (CPU work: feathered alpha at full size, crop, resize).
    `box` is None for an empty mask (nothing to generate; the input comes back unchanged)."""

    item: EditItem
    alpha: np.ndarray  # (H, W) float32 compositing weight
    box: Any = None
    crop: np.ndarray | None = None  # (S, S, 3) uint8 at working size
    region: np.ndarray | None = None  # (S, S) bool at working size


def prepare_item(item: EditItem, cfg: EditConfig) -> Prepared:
    """Geometry of one (validated) item; an empty mask warns and needs no model."""
    if not item.mask.any():
        warnings.warn(f"{item.name}: mask is empty; returning the input unchanged", stacklevel=2)
        return Prepared(item, np.zeros(item.mask.shape, np.float32))
    return Prepared(item, *_prepare(item, cfg))


def run_prepared(lp: LoadedPipeline, prepared: Sequence[Prepared], cfg: EditConfig,
                 prompts: PromptCache | None = None) -> list[np.ndarray | Exception | None]:
    """The model (GPU) part: denoise the non-empty items in batches of `cfg.batch_size` (resolved
    when "auto"); -> one (S, S, 3) uint8 crop per item (None for empty masks; an exception,
    returned not raised so the batch's other items go on, for one whose edit raised alone or
    whose result is broken, an EditResultError: finish_item raises it). `prompts` caches text
    embeddings across calls (one per shard and model); None: a cache for this call."""
    apply_speed_settings(lp, cfg)
    if prompts is None or not prompts.fits(lp.pipe):  # an SD1.5-form cache cannot encode for SDXL
        prompts = PromptCache.of(lp.pipe)
    batch = resolve_batch_size(lp, cfg)
    crops: list[np.ndarray | None] = [None] * len(prepared)
    todo = [i for i, p in enumerate(prepared) if p.box is not None]
    for start in range(0, len(todo), batch):
        idx = todo[start : start + batch]
        out = _run_split(lp, [prepared[i] for i in idx], cfg, prompts)
        for i, crop in zip(idx, out):
            crops[i] = crop
    return crops


def finish_item(lp: LoadedPipeline, p: Prepared, crop: np.ndarray | Exception | None, cfg: EditConfig,
                extra_meta: dict[str, Any] | None = None) -> EditResult:
    """Paste the generated crop back at full resolution (CPU) -> the result with its metadata.
    Raises the exception run_prepared gave in place of the crop of an item that failed."""
    if isinstance(crop, Exception):
        raise crop
    it = p.item
    if p.box is None:
        return EditResult(it.image.copy(), p.alpha, _meta(lp, it, cfg, None, extra_meta),
                          [f"{it.name}: mask is empty; returning the input unchanged"])
    if p.box.side != cfg.size:
        crop = np.asarray(Image.fromarray(crop).resize((p.box.side, p.box.side), Image.LANCZOS))
    return EditResult(region.paste(it.image, crop, p.alpha, p.box), p.alpha, _meta(lp, it, cfg, p.box, extra_meta))


def edit_images(
    lp: LoadedPipeline,
    items: Sequence[EditItem],
    cfg: EditConfig = EditConfig(),
    *,
    required_tokens: Sequence[str] = (),
    extra_meta: dict[str, Any] | None = None,
) -> list[EditResult]:
    """Edit each item inside its mask; every pixel where the returned alpha is 0 is unchanged.

    Raises on the first invalid item (callers that need per-item isolation validate with
    `check_item` first and pass only the good ones). Batches of `cfg.batch_size`. The three
    stages (prepare_item, run_prepared, finish_item) are public so a shard can run the CPU ones
    in other threads while the model runs (lcd.jobs.editing).
    """
    # 1. check inputs
    known = known_concept_tokens(lp.pipe.tokenizer)
    for it in items:
        check_item(it, known, required_tokens)
    check_size(cfg.size, lp.latent_factor)
    # 2. geometry per item, 3. denoise in batches, 4. paste back at full resolution
    prepared = [prepare_item(it, cfg) for it in items]
    crops = run_prepared(lp, prepared, cfg)
    return [finish_item(lp, p, c, cfg, extra_meta) for p, c in zip(prepared, crops)]


def _meta(lp: LoadedPipeline, it: EditItem, cfg: EditConfig, box, extra: dict | None) -> dict[str, Any]:
    """Everything needed to reproduce an output, stored in its PNG."""
    meta = {
        "prompt": it.prompt,
        "negative_prompt": cfg.negative_prompt,
        "seed": it.seed,
        "steps": cfg.steps,
        "guidance": cfg.guidance,
        "sampler": sampler_label(cfg.scheduler),
        "scheduler_class": scheduler_class_name(cfg.scheduler),
        "size": f"{cfg.size}x{cfg.size}",  # the working size the model ran at
        "output_size": f"{it.image.shape[1]}x{it.image.shape[0]}",
        "model": lp.source.ref,
        "model_hash": lp.source.short_hash,
        "model_family": lp.family,
        "model_source": lp.source.to_dict(),
        "edit_config": cfg.model_dump(exclude=set(EXECUTION_ONLY)),
        "crop_box": None if box is None else [box.x0, box.y0, box.side],
        "lcd_version": lcd.__version__,
    }
    if extra:
        meta.update(extra)
    return meta
