"""SAM's image encoder over several images per call, in a chosen dtype.

`SamPredictor.set_image` embeds one image per encoder call. On a GPU the ViT encoder is most of
SAM's time once the decoder is batched, and it is far better used at a batch of several images:
each image is resized to SAM's long side and padded to its square input exactly as
`SamPredictor.set_image` does (`ResizeLongestSide.apply_image`, `Sam.preprocess`), the batch
runs through `sam.image_encoder` once, and every image gets its own (1, C, 64, 64) features.

On CPU the batched call gives the same features as one image at a time, bit for bit (GEMM rows
do not depend on the batch; tests/lcd/masks/test_amg.py checks the masks). float16 / bfloat16
run the encoder under autocast (the model's weights stay float32, the features come back as
float32): about half the encoder time on a GPU, with masks that differ from float32 at pixels
whose logits are near the threshold (bench/gpu.py measures how many).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Embedding:
    """One image's SAM embedding: features (1, C, h, w) float32, the resized input (h, w) and
    the original (H, W) sizes, as SamPredictor keeps them after `set_image`."""

    features: torch.Tensor
    input_size: tuple[int, int]
    original_size: tuple[int, int]


def _input_tensor(sam, transform, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
    """(H, W, 3) uint8 RGB -> (1, 3, S, S) normalised, padded input and its unpadded size."""
    resized = transform.apply_image(image)
    x = torch.as_tensor(resized, device=sam.device).permute(2, 0, 1).contiguous()[None, :, :, :]
    return sam.preprocess(x), (int(x.shape[-2]), int(x.shape[-1]))


@torch.no_grad()
def embed_images(sam, images: Sequence[np.ndarray], dtype: str = "float32") -> list[Embedding]:
    """Embed `images` (each (H, W, 3) uint8 RGB, any sizes) in one image-encoder call.

    -> one Embedding per image, in order. `dtype` float16/bfloat16 runs the encoder under
    torch.autocast on the model's device (CPU autocast supports bfloat16)."""
    from segment_anything.utils.transforms import ResizeLongestSide

    if dtype not in DTYPES:
        raise ValueError(f"encoder_dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    transform = ResizeLongestSide(sam.image_encoder.img_size)
    inputs = [_input_tensor(sam, transform, im) for im in images]
    x = torch.cat([t for t, _ in inputs]) if len(inputs) > 1 else inputs[0][0]
    device_type = torch.device(sam.device).type
    with torch.autocast(device_type, dtype=DTYPES[dtype], enabled=dtype != "float32"):
        feats = sam.image_encoder(x)
    feats = feats.float()
    return [Embedding(feats[i: i + 1], size, tuple(im.shape[:2])) for i, ((_, size), im) in
            enumerate(zip(inputs, images))]
