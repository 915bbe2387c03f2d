"""Component configs of SD1.5 and SD1.5-inpainting, shipped with lcd, for single-file checkpoints.

A single-file checkpoint (`v1-5-pruned-emaonly.safetensors`, what most users download) holds
weights only; diffusers' `from_single_file` then needs each component's config, which it fetches
from the hub unless given a folder. `lcd/models/configs/<kind>/` holds those configs as the
`stable-diffusion-v1-5/stable-diffusion-v1-5` and `.../stable-diffusion-inpainting` repositories
lay them out (model_index, unet, vae, text_encoder, scheduler, tokenizer, feature_extractor); the
tokenizer's vocab.json / merges.txt are CLIP's BPE, rebuilt from open_clip's wheel
(lcd.models.tokenizer) when the folder is materialised.
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
BUNDLED_KINDS = ("sd15", "sd15-inpaint")
# diffusers' model-type names (single_file_utils.infer_diffusers_model_type) -> our bundled folder
_KIND_OF_TYPE = {"v1": "sd15", "inpainting": "sd15-inpaint"}


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
    """'sd15' or 'sd15-inpaint' for an SD1.5-family checkpoint; any other base is an error that
    says to set `models.sd_single_file_config`."""
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    from lcd.io.torchfile import error_line

    try:
        model_type = infer_diffusers_model_type(checkpoint_shapes(path))
    except ModelLoadError:
        raise
    except Exception as e:  # noqa: BLE001 - a torn header, a dict that is no state dict: one line
        raise ModelLoadError(f"{path}: cannot read the checkpoint's tensors: {error_line(e)}", item=str(path)) from None
    if model_type not in _KIND_OF_TYPE:
        raise ModelLoadError(
            f"{path}: a {model_type!r} checkpoint; lcd bundles configs for SD1.5 and SD1.5-inpainting only: "
            "set models.sd_single_file_config to a diffusers folder of this base", item=str(path))
    return _KIND_OF_TYPE[model_type]


@contextmanager
def bundled_config_dir(kind: str) -> Iterator[Path]:
    """A temporary diffusers config folder for `kind` (configs + CLIP tokenizer files)."""
    if kind not in BUNDLED_KINDS:
        raise ModelLoadError(f"no bundled configs for {kind!r} (have {BUNDLED_KINDS})", item=kind)
    with tempfile.TemporaryDirectory(prefix=f"lcd-{kind}-") as tmp:
        out = Path(tmp) / kind
        shutil.copytree(CONFIGS / kind, out)
        write_clip_tokenizer(out / "tokenizer")
        # the tokenizer_config shipped is SD1.5's own; write_clip_tokenizer's generic one must not replace it
        shutil.copy(CONFIGS / kind / "tokenizer" / "tokenizer_config.json", out / "tokenizer" / "tokenizer_config.json")
        yield out
