"""The encoders beside Stable Diffusion: SAM (segment_anything checkpoints, weights-only), CLIP and
DINO (transformers folders or hub ids) and open_clip (a config plus a state dict). Each returns
the model with the `ModelSource` that pins it; every folder is checked (lcd.models.trust) before
transformers or open_clip reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lcd.errors import ModelLoadError
from lcd.io.torchfile import error_line, load_weights
from lcd.models.resolve import check_device, resolve, to_dtype
from lcd.models.sources import ModelSource, local_source
from lcd.models.trust import check_open_clip_config, check_transformers_folder

# vit_tiny: segment_anything's own `_build_sam` with a narrow, shallow ViT (the tests' and demo's SAM)
TINY_SAM = dict(encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2, encoder_global_attn_indexes=[1])

def _sam_builders() -> dict[str, Any]:
    from functools import partial

    from segment_anything import sam_model_registry
    from segment_anything.build_sam import _build_sam

    from lcd.models.sam_builders import TINY_VIT_BUILDERS

    builders = {k: v for k, v in sam_model_registry.items() if k != "default"}
    builders["vit_tiny"] = partial(_build_sam, **TINY_SAM)
    return builders | TINY_VIT_BUILDERS


# vit_t: MobileSAM (TinyViT, mobile_sam.pt); litemedsam: LiteMedSAM (TinyViT at 256 px, lite_medsam.pth)
SAM_TYPES = ("vit_h", "vit_l", "vit_b", "vit_t", "litemedsam", "vit_tiny")


def load_sam(checkpoint: str | Path, model_type: str, *, device: str | torch.device = "cpu"):
    """Build segment_anything's `Sam` of `model_type` and load an official-format state dict.

    Returns (sam, ModelSource). A checkpoint whose shapes do not fit the type is a clear error.
    """
    device = check_device(device)
    if model_type not in SAM_TYPES:
        raise ModelLoadError(f"sam_type must be one of {SAM_TYPES}, got {model_type!r}", item="sam_type")
    path, source = resolve(checkpoint, patterns=["*.pth", "*.pt", "*.safetensors"])
    if path.is_dir():
        files = sorted(path.glob("*.pth")) + sorted(path.glob("*.safetensors"))
        if not files:
            raise ModelLoadError(f"{checkpoint}: no SAM checkpoint (.pth) in folder", item=str(checkpoint))
        path = files[0]
        source = local_source(path) if source.kind != "hub" else source
    sam = _sam_builders()[model_type](checkpoint=None)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as e:  # noqa: BLE001 - a torn or foreign file: its own fault, in one line
            raise ModelLoadError(f"{path}: cannot read SAM checkpoint: {error_line(e)}", item=str(path)) from None
    else:  # weights_only: a pickle naming anything but tensors is refused (lcd.io.torchfile)
        state = load_weights(path, "SAM checkpoint")
    if not isinstance(state, dict):
        raise ModelLoadError(f"{path}: not a SAM state dict (a {type(state).__name__})", item=str(path))
    try:
        sam.load_state_dict(state)
    except RuntimeError as e:  # torch: a header line, then one line per kind of mismatch: keep the first
        lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0] if lines else type(e).__name__
        raise ModelLoadError(
            f"{path}: weights do not fit SAM type {model_type!r}: {detail[:300]}", item=str(path),
        ) from None
    return sam.to(device).eval(), source


# --- CLIP ------------------------------------------------------------------------------------

def load_clip(ref: str | Path, *, revision: str | None = None, dtype="float32", device="cpu"):
    """transformers CLIPModel + CLIPProcessor from a hub id or local folder -> (model, processor, source)."""
    from transformers import CLIPModel, CLIPProcessor

    device = check_device(device)
    path, source = resolve(ref, revision, patterns=["*.json", "*.txt", "*.safetensors"],
                           check=lambda p: check_transformers_folder(p, "CLIP"))
    try:
        model = CLIPModel.from_pretrained(str(path), torch_dtype=to_dtype(dtype), local_files_only=True)
        processor = CLIPProcessor.from_pretrained(str(path), local_files_only=True)
    except Exception as e:
        raise ModelLoadError(f"{ref}: failed to load CLIP: {error_line(e)}", item=str(ref)) from e
    return model.to(device).eval(), processor, source


# --- DINO ------------------------------------------------------------------------------------

def load_dino(ref: str | Path, *, revision: str | None = None, dtype="float32", device="cpu"):
    """transformers ViTModel (e.g. facebook/dino-vits16) + its image processor -> (model, processor, source).

    DINO-I uses the final [CLS] token (`last_hidden_state[:, 0]`), as DreamBooth's metric does.
    """
    from transformers import AutoImageProcessor, ViTModel

    path, source = resolve(ref, revision, patterns=["*.json", "*.txt", "*.safetensors", "*.bin"],
                           check=lambda p: check_transformers_folder(p, "DINO ViT"))
    try:
        model = ViTModel.from_pretrained(
            str(path), torch_dtype=to_dtype(dtype), local_files_only=True, add_pooling_layer=False
        )
        processor = AutoImageProcessor.from_pretrained(str(path), local_files_only=True)
    except Exception as e:
        raise ModelLoadError(f"{ref}: failed to load DINO ViT: {error_line(e)}", item=str(ref)) from e
    return model.to(device).eval(), processor, source


# --- open_clip (regularization-set caption filter, clip-retrieval) ----------------------------

@dataclass
class LoadedOpenClip:
    """An open_clip CLIP, its image preprocess, tokenizer, and `clip_retrieval_ref`: the string
    clip-retrieval (all_clip) resolves to the same weights, e.g. "open_clip:ARCH//abs/file"."""

    model: Any
    preprocess: Any
    tokenizer: Any
    arch: str
    clip_retrieval_ref: str
    source: ModelSource


def register_open_clip(ref: str | Path) -> tuple[str, str]:
    """Make an open_clip reference loadable in this process -> (arch, pretrained).

    A local folder holds one `<ARCH>.json` model config and one weights file; the config is
    registered with open_clip (clip-retrieval subprocesses must call this too). Otherwise `ref`
    is "ARCH/pretrained" with pretrained a file path or a tag (tags need the hub).
    """
    import open_clip

    p = Path(ref)
    if p.is_dir():
        configs = sorted(p.glob("*.json"))
        weights = sorted(p.glob("*.safetensors")) + sorted(p.glob("*.bin")) + sorted(p.glob("*.pt"))
        if len(configs) != 1 or not weights:
            raise ModelLoadError(
                f"{ref}: an open_clip folder needs exactly one <ARCH>.json and one weights file "
                f"(found {len(configs)} configs, {len(weights)} weight files)", item=str(ref),
            )
        check_open_clip_config(configs[0])
        open_clip.add_model_config(configs[0])
        return configs[0].stem, str(weights[0].resolve())
    arch, _, pretrained = str(ref).partition("/")
    if arch not in open_clip.list_models():
        raise ModelLoadError(f"{ref}: not an open_clip folder and {arch!r} is not an open_clip model", item=str(ref))
    return arch, pretrained


def load_open_clip(ref: str | Path, *, device: str | torch.device = "cpu") -> LoadedOpenClip:
    """open_clip model from a local folder (see `register_open_clip`) or "ARCH/pretrained"."""
    import open_clip

    arch, pretrained = register_open_clip(ref)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=pretrained or None, device=device)
    except Exception as e:
        raise ModelLoadError(f"{ref}: failed to load open_clip: {type(e).__name__}: {e}", item=str(ref)) from e
    p = Path(ref)
    source = local_source(p) if p.is_dir() else ModelSource(ref=str(ref), kind="hub", revision=pretrained)
    return LoadedOpenClip(
        model=model.eval(), preprocess=preprocess, tokenizer=open_clip.get_tokenizer(arch), arch=arch,
        clip_retrieval_ref=f"open_clip:{arch}/{pretrained}", source=source,
    )
