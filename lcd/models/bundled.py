"""Component configs of SD1.5, SDXL and their inpainting models, shipped with lcd, for single files.

A single-file checkpoint (`v1-5-pruned-emaonly.safetensors`, `sd_xl_base_1.0.safetensors`: what
most users download) holds weights only; diffusers' `from_single_file` then needs each
component's config, which it fetches from the hub unless given a folder. `lcd/models/configs/<kind>/`
holds those configs as the `stable-diffusion-v1-5/stable-diffusion-v1-5`, `.../stable-diffusion-inpainting`,
`stabilityai/stable-diffusion-xl-base-1.0` and `diffusers/stable-diffusion-xl-1.0-inpainting-0.1`
repositories lay them out (model_index, unet, vae, text_encoder[_2], scheduler, tokenizer[_2]);
`sdxl-tiny[-inpaint]` are the tiny SDXL models `lcd models tiny` writes (lcd.models.sdxl_tiny).
The tokenizers' vocab.json / merges.txt are CLIP's BPE, rebuilt from open_clip's wheel
(lcd.models.tokenizer) when the folder is materialised.

Which kind a file is comes from its keys and shapes alone: SDXL files (generative-models' layout)
hold `conditioner.embedders.0.transformer.*` (CLIP ViT-L) and `conditioner.embedders.1.model.*`
(OpenCLIP ViT-bigG); a 9-channel first convolution is an inpainting UNet; the UNet's base width
and the two encoders' widths pick the bundled kind whose configs have them.
"""

from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from lcd.errors import ModelLoadError
from lcd.models.tokenizer import write_clip_tokenizer

CONFIGS = Path(__file__).parent / "configs"
BUNDLED_KINDS = ("sd15", "sd15-inpaint", "sdxl", "sdxl-inpaint", "sdxl-tiny", "sdxl-tiny-inpaint")
SDXL_KINDS = ("sdxl", "sdxl-tiny")  # base kinds; "<kind>-inpaint" for 9-channel UNets
# diffusers' model-type names (single_file_utils.infer_diffusers_model_type) -> our bundled folder
_KIND_OF_TYPE = {"v1": "sd15", "inpainting": "sd15-inpaint"}
# generative-models' SDXL layout: the first key of each of its two text encoders, the UNet's conv_in
SDXL_CLIP_L = "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight"
SDXL_CLIP_G = "conditioner.embedders.1.model.token_embedding.weight"
LDM_CONV_IN = "model.diffusion_model.input_blocks.0.0.weight"


def checkpoint_shapes(path: str | Path) -> dict[str, torch.Tensor]:
    """{key: empty meta tensor of the stored shape}, read without loading the weights: safetensors
    from the header, pickles memory-mapped (weights_only, so no code runs)."""
    p = Path(path)
    if p.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(p), framework="pt") as f:
            return {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}
    import zipfile

    from lcd.io.torchfile import load_weights

    # mmap needs torch's zip format; a legacy pickle (older .ckpt) is read whole, still weights-only
    state = load_weights(p, "the checkpoint's tensors", mmap=zipfile.is_zipfile(p))
    state = state.get("state_dict", state)
    return {k: torch.empty(v.shape, device="meta") for k, v in state.items() if isinstance(v, torch.Tensor)}


def single_file_kind(path: str | Path) -> str:
    """The bundled kind of a checkpoint ('sd15', 'sd15-inpaint', 'sdxl', 'sdxl-inpaint',
    'sdxl-tiny', 'sdxl-tiny-inpaint'), read off its keys and shapes; any other base is an error
    that says to set `models.sd_single_file_config`."""
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    from lcd.io.torchfile import error_line

    try:
        shapes = checkpoint_shapes(path)
        if SDXL_CLIP_G in shapes or SDXL_CLIP_L in shapes:
            return sdxl_kind(shapes, path)
        model_type = infer_diffusers_model_type(shapes)
    except ModelLoadError:
        raise
    except Exception as e:  # noqa: BLE001 - a torn header, a dict that is no state dict: one line
        raise ModelLoadError(f"{path}: cannot read the checkpoint's tensors: {error_line(e)}", item=str(path)) from None
    if model_type not in _KIND_OF_TYPE:
        raise ModelLoadError(
            f"{path}: a {model_type!r} checkpoint; lcd bundles configs for SD1.5, SDXL and their inpainting "
            "models only: set models.sd_single_file_config to a diffusers folder of this base", item=str(path))
    return _KIND_OF_TYPE[model_type]


def _signature(kind: str) -> tuple[int, int, int]:
    """(UNet base width, CLIP-L width, bigG width) of a bundled SDXL kind, from its configs."""
    from lcd.models.trust import read_config

    def cfg(c: str) -> dict:
        return read_config(CONFIGS / kind / c / "config.json")

    return (cfg("unet")["block_out_channels"][0], cfg("text_encoder")["hidden_size"],
            cfg("text_encoder_2")["hidden_size"])


def sdxl_kind(shapes: dict[str, torch.Tensor], path: str | Path) -> str:
    """The bundled SDXL kind whose configs have this checkpoint's widths; "-inpaint" when its UNet
    takes 9 channels. A refiner (one encoder) or another width is a one-line error."""
    missing = [k for k in (SDXL_CLIP_L, SDXL_CLIP_G, LDM_CONV_IN) if k not in shapes]
    if missing:
        raise ModelLoadError(f"{path}: an SDXL-layout checkpoint without {missing[0]} (a refiner, or a part of a "
                             "model); lcd loads SDXL base and inpainting files: set models.sd_single_file_config "
                             "to a diffusers folder of this base", item=str(path))
    width, in_channels = shapes[LDM_CONV_IN].shape[:2]
    found = (int(width), int(shapes[SDXL_CLIP_L].shape[1]), int(shapes[SDXL_CLIP_G].shape[1]))
    suffix = "-inpaint" if in_channels == 9 else ""
    for kind in SDXL_KINDS:
        if _signature(kind) == found:
            return kind + suffix
    raise ModelLoadError(f"{path}: an SDXL-layout checkpoint of widths (UNet, CLIP-L, bigG) {found}, which no bundled "
                         f"config has ({', '.join(f'{k}: {_signature(k)}' for k in SDXL_KINDS)}): set "
                         "models.sd_single_file_config to a diffusers folder of this base", item=str(path))


@contextmanager
def bundled_config_dir(kind: str) -> Iterator[Path]:
    """A temporary diffusers config folder for `kind` (configs + CLIP tokenizer files)."""
    if kind not in BUNDLED_KINDS:
        raise ModelLoadError(f"no bundled configs for {kind!r} (have {BUNDLED_KINDS})", item=kind)
    with tempfile.TemporaryDirectory(prefix=f"lcd-{kind}-") as tmp:
        out = Path(tmp) / kind
        shutil.copytree(CONFIGS / kind, out)
        for tok in ("tokenizer", "tokenizer_2"):
            if not (CONFIGS / kind / tok).is_dir():
                continue
            write_clip_tokenizer(out / tok)
            # the tokenizer configs shipped are the model's own (SDXL's tokenizer_2 pads with "!");
            # write_clip_tokenizer's generic ones must not replace them
            for f in (CONFIGS / kind / tok).iterdir():
                shutil.copy(f, out / tok / f.name)
        yield out
