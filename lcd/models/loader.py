"""The one place Stable Diffusion weights are loaded (SAM, CLIP, DINO, open_clip: lcd.models.encoders).

Each loader takes a reference (hub id, local folder or checkpoint file), a dtype and a device,
and returns the model plus the `ModelSource` that pins it. Pickled checkpoints are only read with
`weights_only=True` (diffusers' own `load_state_dict` does so for `.ckpt`; SAM likewise),
so a checkpoint can never execute code; and every folder's configs are checked
(lcd.models.trust) before diffusers or transformers reads them, so a folder cannot name a
module to import either. `trust_remote_code` is never passed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lcd.errors import ModelLoadError
from lcd.io.torchfile import error_line, load_weights
from lcd.models.layout import FolderLayout
from lcd.models.trust import check_sd_folder
from lcd.models.sources import SINGLE_FILE_SUFFIXES, ModelSource
# references and pins (lcd.models.resolve) and the other encoders (lcd.models.encoders) are also
# importable from here, where their callers have always found them
from lcd.models.resolve import (DTYPES, SD_CONFIG_PATTERNS, SD_WEIGHT_PATTERNS, check_device,  # noqa: F401
                                check_local_models, check_sd_reference, quiet_unpickler, resolve, resolve_sd,
                                sd_hub_rounds, to_dtype)
from lcd.models.encoders import (SAM_TYPES, TINY_SAM, LoadedOpenClip, load_clip, load_dino,  # noqa: F401
                                 load_open_clip, load_sam, register_open_clip)


@dataclass
class LoadedPipeline:
    """A diffusers SD1.x or SDXL pipeline (4- or 9-channel UNet) and the source that pins it.

    SDXL pipelines are diffusers' own StableDiffusionXLPipeline / StableDiffusionXLInpaintPipeline:
    `pipe.tokenizer` / `pipe.text_encoder` (CLIP ViT-L) and `pipe.tokenizer_2` /
    `pipe.text_encoder_2` (OpenCLIP ViT-bigG with projection)."""

    pipe: Any
    source: ModelSource

    @property
    def family(self) -> str:
        """"sdxl" or "sd15", read off the UNet as diffusers itself tells them apart: SDXL's is
        conditioned on pooled text and time ids (`addition_embed_type="text_time"`)."""
        return pipeline_family(self.pipe.unet.config)

    @property
    def is_inpaint_model(self) -> bool:
        return self.pipe.unet.config.in_channels == 9

    @property
    def latent_factor(self) -> int:
        """Pixels per latent cell along a side: 8 for SD's VAE (diffusers' `vae_scale_factor`)."""
        return latent_factor(self.pipe.vae)


def pipeline_family(unet_config) -> str:
    """"sdxl" for a UNet config with `addition_embed_type` "text_time", else "sd15"."""
    get = unet_config.get if isinstance(unet_config, dict) else lambda k, d=None: getattr(unet_config, k, d)
    return "sdxl" if get("addition_embed_type") == "text_time" else "sd15"


def pipeline_class(family: str, in_channels: int):
    """The diffusers pipeline class of a family ("sd15" | "sdxl") and UNet input width (9: inpainting)."""
    import diffusers

    name = {("sd15", False): "StableDiffusionPipeline", ("sd15", True): "StableDiffusionInpaintPipeline",
            ("sdxl", False): "StableDiffusionXLPipeline", ("sdxl", True): "StableDiffusionXLInpaintPipeline"}
    return getattr(diffusers, name[(family, in_channels == 9)])


def latent_factor(vae) -> int:
    """2 ** (number of VAE blocks - 1), read off the VAE's config as diffusers' pipelines do."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def load_sd_pipeline(
    ref: str | Path,
    *,
    revision: str | None = None,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    single_file_config: str | Path | None = None,
    vae_dtype: str = "auto",
    variant: str | None = None,
) -> LoadedPipeline:
    """Load Stable Diffusion (SD1.x or SDXL) from a hub id, a diffusers folder, or one
    .safetensors/.ckpt file; the family is read off the model, never configured.

    Single files of SD1.5, SDXL and their inpainting models load with the component configs
    bundled in `lcd/models/configs` (no hub; lcd.models.bundled reads the kind off the keys);
    `single_file_config` (a diffusers folder or hub id) gives them for other bases. Returns a
    StableDiffusion[XL]Pipeline, or StableDiffusion[XL]InpaintPipeline for a 9-channel UNet; the
    safety checker and feature extractor are never loaded. A folder's
    weights are those of `variant` ("fp16", "non_ema"; a component without it reads its plain
    files), or with None the plain files, or the one variant a component holds when it has no
    plain file (lcd.models.layout); safetensors before `.bin`.
    """
    from diffusers.utils import logging as dlogging

    torch_dtype = to_dtype(dtype)
    device = check_device(device)
    path, source, layout = resolve_sd(ref, revision, variant)
    dlogging.disable_progress_bar()  # batch logs, not terminal bars
    try:
        with quiet_unpickler():  # diffusers reads a .ckpt with weights_only=True too
            pipe = _load_single_file(path, ref, torch_dtype, single_file_config) if layout is None \
                else _load_folder(layout, ref, torch_dtype)
    except ModelLoadError:
        raise
    except Exception as e:
        raise ModelLoadError(f"{ref}: failed to load Stable Diffusion: {error_line(e)}", item=str(ref)) from e
    finally:
        dlogging.enable_progress_bar()
    pipe.set_progress_bar_config(disable=True)
    pipe = pipe.to(device)
    vdt = resolve_vae_dtype(vae_dtype, torch_dtype, pipe.vae.config)
    if vdt != torch_dtype:
        pipe.vae.to(vdt)
        _cast_vae_inputs(pipe.vae)
    return LoadedPipeline(pipe=pipe, source=source)


def _cast_vae_inputs(vae) -> None:
    """Cast whatever reaches the VAE's encoder/decoder to the VAE's own dtype, so diffusers'
    pipelines (which hand it latents in the UNet's dtype) work with an upcast VAE."""
    def cast(module, args):
        return tuple(a.to(vae.dtype) if torch.is_tensor(a) and a.is_floating_point() else a for a in args)

    for name in ("encoder", "quant_conv", "post_quant_conv", "decoder"):
        m = getattr(vae, name, None)
        if m is not None:
            m.register_forward_pre_hook(cast)


def resolve_vae_dtype(vae_dtype: str, dtype: torch.dtype, vae_config) -> torch.dtype:
    """models.vae_dtype -> the VAE's torch dtype. "auto": float32 for a float16 model whose VAE
    config has `force_upcast` (true by default in diffusers' AutoencoderKL), else the model's."""
    if vae_dtype != "auto":
        return to_dtype(vae_dtype)
    if dtype == torch.float16 and getattr(vae_config, "force_upcast", True):
        return torch.float32
    return dtype


def _load_folder(layout: FolderLayout, ref, torch_dtype):
    """A diffusers pipeline folder (model_index.json), whatever scheduler and extras it lists.
    Each weights component loads from exactly the files `layout` chose (its variant and format
    passed on), so what is pinned is what is read; tokenizer and scheduler load as diffusers does."""
    from lcd.models.trust import read_config

    path = layout.folder
    unet_cfg = read_config(path / "unet" / "config.json")
    cls = pipeline_class(pipeline_family(unet_cfg), unet_cfg.get("in_channels"))
    components = {w.component: _load_component(path, w, torch_dtype) for w in layout.weights}
    return cls.from_pretrained(str(path), torch_dtype=torch_dtype, local_files_only=True, **components,
                               safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def _load_component(path: Path, w, torch_dtype):
    """One model component from its chosen files. Its class is the one model_index.json names,
    already checked against lcd.models.trust's allowlist; pickles are read by torch's weights-only
    unpickler first (lcd.io.torchfile), so a refused one is one line naming the file and global."""
    import zipfile

    import diffusers
    import transformers

    if w.fmt == "bin":
        for f in w.files:
            if not f.endswith(".json"):
                load_weights(path / f, f"{w.component} weights", mmap=zipfile.is_zipfile(path / f))
    model_cls = getattr({"diffusers": diffusers, "transformers": transformers}[w.library], w.cls)
    dtype = {"dtype" if w.library == "transformers" else "torch_dtype": torch_dtype}  # each library's name
    transformers.utils.logging.disable_progress_bar()  # "Loading checkpoint shards": batch logs, not bars
    try:
        return model_cls.from_pretrained(str(path / w.component), variant=w.variant, use_safetensors=w.use_safetensors,
                                         local_files_only=True, **dtype)
    finally:
        transformers.utils.logging.enable_progress_bar()


def _load_single_file(path: Path, ref, torch_dtype, single_file_config):
    """An original-layout (LDM / generative-models) checkpoint; component configs bundled for
    SD1.5, SDXL and their inpainting models, or the folder `single_file_config` names."""
    from lcd.models.bundled import bundled_config_dir, single_file_kind
    from lcd.models.trust import read_config

    if path.suffix not in SINGLE_FILE_SUFFIXES:
        raise ModelLoadError(f"{ref}: single-file checkpoints must be one of {SINGLE_FILE_SUFFIXES}", item=str(ref))
    kwargs: dict[str, Any] = {"torch_dtype": torch_dtype, "local_files_only": True, "safety_checker": None,
                              "feature_extractor": None, "requires_safety_checker": False}
    if single_file_config is not None:
        cfg_path, _ = resolve(single_file_config, check=check_sd_folder)
        family = pipeline_family(read_config(Path(cfg_path) / "unet" / "config.json"))
        return _from_single_file(pipeline_class(family, 4), path, str(cfg_path), kwargs)
    kind = single_file_kind(path)
    with bundled_config_dir(kind) as cfg_dir:
        check_sd_folder(cfg_dir)  # shipped with lcd, checked all the same
        cls = pipeline_class("sdxl" if kind.startswith("sdxl") else "sd15", 9 if kind.endswith("-inpaint") else 4)
        return _from_single_file(cls, path, str(cfg_dir), kwargs)


def _from_single_file(cls, path: Path, config: str, kwargs: dict):
    """`cls.from_single_file`; a 9-channel UNet read through a text-to-image config becomes its
    family's inpainting pipeline."""
    pipe = cls.from_single_file(str(path), config=config, **kwargs)
    inpaint_cls = pipeline_class(pipeline_family(pipe.unet.config), 9)
    if pipe.unet.config.in_channels == 9 and not isinstance(pipe, inpaint_cls):
        pipe = inpaint_cls(**pipe.components)
    return pipe


