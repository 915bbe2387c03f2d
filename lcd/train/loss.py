"""The training objective, the same for every model family: masked epsilon (or v) MSE.

The family (lcd.concepts.family) decides what the UNet is conditioned on: SD1.5 the text
context alone; SDXL also the pooled text embedding and each example's time ids
(`added_cond_kwargs`). Token rows being learned are spliced into each text encoder out of place
(`family.encode_prompts(..., rows=...)`), so gradients reach only them.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from lcd.concepts.family import encode_prompts
from lcd.models.loader import latent_factor


def noise_scheduler(sched):
    """The DDPM forward process on `sched`'s noise schedule (betas, prediction type): what diffusers'
    trainers noise with. A sampler's own add_noise may not take any training timestep: Euler
    (SDXL's default) looks timesteps up in its current inference schedule."""
    from diffusers import DDPMScheduler

    keep = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "prediction_type",
            "rescale_betas_zero_snr")
    return DDPMScheduler.from_config({k: v for k, v in sched.config.items() if k in keep})


def diffusion_loss(pipe, images: torch.Tensor, masks: torch.Tensor, text: torch.Tensor, gen: torch.Generator,
                   autocast=None, added_cond: dict | None = None) -> torch.Tensor:
    """Per-example masked epsilon MSE (B,). images (B, 3, S, S) in [-1, 1]; masks (B, 1, S/f, S/f),
    f the VAE's latent factor; text (B, L, D) the UNet's context; `added_cond` SDXL's
    {'text_embeds': (B, P), 'time_ids': (B, 6)} (None for SD1.5)."""
    unet, vae, sched = pipe.unet, pipe.vae, noise_scheduler(pipe.scheduler)
    dev = unet.device
    with torch.no_grad():
        dist = vae.encode(images.to(dev, vae.dtype)).latent_dist
        eps0 = torch.randn(dist.mean.shape, generator=gen).to(dev, dist.mean.dtype)
        latents = (dist.mean + dist.std * eps0) * vae.config.scaling_factor
    noise = torch.randn(latents.shape, generator=gen).to(dev, latents.dtype)
    t = torch.randint(0, sched.config.num_train_timesteps, (latents.shape[0],), generator=gen).to(dev)
    noisy = sched.add_noise(latents, noise, t)
    extra = {} if added_cond is None else {"added_cond_kwargs": {k: v.to(unet.dtype) for k, v in added_cond.items()}}
    with autocast or torch.autocast(dev.type, enabled=False):
        pred = unet(noisy.to(unet.dtype), t, encoder_hidden_states=text.to(unet.dtype), return_dict=False, **extra)[0]
    target = noise if sched.config.prediction_type == "epsilon" else sched.get_velocity(latents, noise, t)
    m = masks.to(dev, torch.float32)
    err = F.mse_loss(pred.float(), target.float(), reduction="none").mean(1, keepdim=True) * m
    return err.sum((1, 2, 3)) / m.sum((1, 2, 3)).clamp_min(1.0)


def batch_loss(pipe, images: np.ndarray, masks: np.ndarray, captions: Sequence[str], time_ids: np.ndarray,
               rows, gen: torch.Generator, autocast=None) -> torch.Tensor:
    """`diffusion_loss` of a sampled batch (lcd.train.data.sample_batch's arrays) with the token
    `rows` [(ids (n,), rows (n, D_e)) per text encoder] spliced in -> (B,)."""
    with autocast or torch.autocast(pipe.unet.device.type, enabled=False):
        cond = encode_prompts(pipe, captions, rows)
    return diffusion_loss(pipe, torch.from_numpy(images), torch.from_numpy(masks), cond.context, gen, autocast,
                          cond.added_cond(torch.from_numpy(time_ids)))


@torch.no_grad()
def concept_loss(pipe, images: np.ndarray, captions: Sequence[str], seed: int = 0, repeats: int = 2) -> float:
    """Mean un-augmented diffusion loss of `images` (N, 3, S, S) in [-1, 1] under fixed noise and
    timesteps: a like-for-like measure before and after training (SDXL: time ids of an uncropped
    S x S photo)."""
    gen = torch.Generator("cpu").manual_seed(seed)
    cond = encode_prompts(pipe, captions)
    x = torch.from_numpy(images)
    f = latent_factor(pipe.vae)
    s = x.shape[2]
    masks = torch.ones(x.shape[0], 1, s // f, x.shape[3] // f)
    added = cond.added_cond(torch.tensor([[s, x.shape[3], 0, 0, s, x.shape[3]]] * x.shape[0], dtype=torch.float32))
    return float(torch.stack([diffusion_loss(pipe, x, masks, cond.context, gen, added_cond=added).mean()
                              for _ in range(repeats)]).mean())
