"""The denoising loop: any diffusers sampler, classifier-free guidance and latent blending.

Pure tensor code over diffusers components; no files, no device decisions (tensors arrive on
their device). Shapes: latents (B, C, h, w) with h = H / f, f the VAE's latent factor; masks
(B, 1, h, w) float in {0, 1}, 1 = generate; text embeddings (B, 77, D) (SDXL: D = 768 + 1280).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lcd.models.schedulers import step_kwargs


@dataclass(frozen=True)
class SamplerSettings:
    steps: int = 60
    guidance: float = 6.0
    eta: float = 0.0
    blend_start: float = 0.0  # fraction of steps run unblended before latent blending starts
    blend: bool = True  # plain (4-channel) models: replace latents outside the mask each step


def encode_prompts(tokenizer, text_encoder, prompts: list[str]) -> torch.Tensor:
    """CLIP last hidden states (B, 77, D), as diffusers' `encode_prompt` makes them (padded to
    max length; the attention mask passed only to text encoders configured to use one)."""
    tok = tokenizer(
        prompts, padding="max_length", max_length=tokenizer.model_max_length,
        truncation=True, return_tensors="pt",
    )
    mask = None
    if getattr(text_encoder.config, "use_attention_mask", False):
        mask = tok.attention_mask.to(text_encoder.device)
    return text_encoder(tok.input_ids.to(text_encoder.device), attention_mask=mask)[0]


def _chunks(x: torch.Tensor, n: int) -> list[torch.Tensor]:
    return list(x.split(n)) if n > 0 else [x]


@torch.no_grad()
def encode_latents(vae, images: torch.Tensor, slice_size: int = 0) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> scaled latents (B, C, H/f, W/f), the posterior mean.

    The mean (not a sample) keeps the preserved region's latents noise-free and deterministic.
    `slice_size` > 0 runs the VAE on that many images at a time (peak memory of large batches).
    """
    return torch.cat([vae.encode(x.to(vae.dtype)).latent_dist.mode() for x in _chunks(images, slice_size)]
                     ) * vae.config.scaling_factor


@torch.no_grad()
def decode_latents(vae, latents: torch.Tensor, slice_size: int = 0) -> torch.Tensor:
    """Scaled latents -> (B, 3, H, W) float in [0, 1]; `slice_size` as in encode_latents."""
    z = latents.to(vae.dtype) / vae.config.scaling_factor
    x = torch.cat([vae.decode(c).sample for c in _chunks(z, slice_size)])
    return (x / 2 + 0.5).clamp(0, 1)


@torch.no_grad()
def denoise(
    unet,
    scheduler,
    *,
    noise: torch.Tensor,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    settings: SamplerSettings,
    image_latents: torch.Tensor | None = None,
    latent_mask: torch.Tensor | None = None,
    inpaint_cond: torch.Tensor | None = None,
    generators: list[torch.Generator] | None = None,
    added_cond: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Run the reverse process from pure noise; return final latents (B, C, h, w).

    `scheduler` is any diffusers sampler (lcd.models.schedulers); `generators` (one per item,
    CPU) feed samplers that draw noise during sampling, so results do not depend on the batch.

    One UNet call per step covers the whole batch and both guidance branches
    (batch 2B: [uncond; cond]), as in diffusers' pipelines.
    - Plain models (`inpaint_cond` None): after each step, latents outside `latent_mask` are
      replaced by `image_latents` noised to the next timestep (Blended Latent Diffusion; the
      legacy path of diffusers' inpaint pipeline), from step round(blend_start * steps) on.
    - 9-channel models: `inpaint_cond` (B, 5, h, w) = [mask, masked-image latents] is
      concatenated to the UNet input; no blending (the model conditions on the mask).
    - SDXL: `added_cond` ({"text_embeds": (2B, P), "time_ids": (2B, 6)}, in the [uncond; cond]
      order of lcd.edit.prompts.added_conditioning) goes to the UNet as `added_cond_kwargs`.
    """
    scheduler.set_timesteps(settings.steps, device=noise.device)
    timesteps = scheduler.timesteps
    latents = noise * scheduler.init_noise_sigma
    text = torch.cat([uncond, cond])
    extra = torch.cat([inpaint_cond] * 2) if inpaint_cond is not None else None
    extra_step = step_kwargs(scheduler, eta=settings.eta, generators=generators)
    blending = settings.blend and inpaint_cond is None and image_latents is not None and latent_mask is not None
    first_blend = int(round(settings.blend_start * len(timesteps)))
    for i, t in enumerate(timesteps):
        x = scheduler.scale_model_input(torch.cat([latents] * 2), t)
        if extra is not None:
            x = torch.cat([x, extra], dim=1)
        eps_uncond, eps_text = unet(x, t, encoder_hidden_states=text, added_cond_kwargs=added_cond,
                                    return_dict=False)[0].chunk(2)
        eps = eps_uncond + settings.guidance * (eps_text - eps_uncond)
        latents = scheduler.step(eps, t, latents, **extra_step, return_dict=False)[0]
        if blending and i >= first_blend:
            if i < len(timesteps) - 1:
                known = scheduler.add_noise(image_latents, noise, timesteps[i + 1 : i + 2])
            else:
                known = image_latents
            latents = (1 - latent_mask) * known + latent_mask * latents
    return latents
