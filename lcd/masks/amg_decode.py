"""SAM's mask decoder for grids of single-point prompts, with the work shared across points.

segment_anything's `MaskDecoder.predict_masks` repeats the image embedding once per prompt and
runs the two-way transformer and the output upscaling for every prompt. For the automatic
generator's prompts (one positive point each, no box, no mask input) two things are wasted:

1. In the first transformer block the image side is the same for every point (the embedding
   plus SAM's no-mask embedding; that block skips the query PE), so the key and value
   projections of the token-to-image attention and the query projection of the image-to-token
   attention are computed once, on one copy of the 64x64 embedding, not once per point.
2. The predicted IoU comes from the IoU token alone, before the masks are upscaled, so the
   output upscaling (two transposed convolutions to (32, 256, 256) per point, a quarter of the
   decoder's work) runs only for points with at least one candidate that passes
   `pred_iou_thresh`, and the hypernetwork products only for those candidates.

The arithmetic is SAM's own, op by op, on the same modules and weights: on CPU the logits and
IoUs equal `SamPredictor.predict_torch`'s bit for bit (tests/lcd/masks/test_amg.py checks).
Shapes: B points -> candidate logits (K, 256, 256) float32 at SAM's low resolution.
"""

from __future__ import annotations

import math

import torch


def _heads(x: torch.Tensor, n: int) -> torch.Tensor:
    b, t, c = x.shape
    return x.reshape(b, t, n, c // n).transpose(1, 2)


def _attend(attn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """segment_anything's `Attention.forward` after the input projections (q, k, v projected,
    (B, T, internal_dim) each; a shared operand may be a stride-0 expand of one row)."""
    n = attn.num_heads
    q, k, v = _heads(q, n), _heads(k, n), _heads(v, n)
    a = q @ k.permute(0, 1, 3, 2)
    a = torch.softmax(a / math.sqrt(q.shape[-1]), dim=-1)
    out = (a @ v).transpose(1, 2)
    return attn.out_proj(out.reshape(out.shape[0], out.shape[1], -1))


def transformer_shared(transformer, image1: torch.Tensor, pe1: torch.Tensor, tokens: torch.Tensor):
    """TwoWayTransformer.forward for B prompts on one image: image1 / pe1 (1, C, h, w) (the
    embedding plus the dense prompt embedding, and the positional encoding), tokens (B, T, C).
    -> (queries (B, T, C), keys (B, hw, C)), equal to the stock call on B repeated copies."""
    b = tokens.shape[0]
    keys1 = image1.flatten(2).permute(0, 2, 1)  # (1, hw, C)
    kpe1 = pe1.flatten(2).permute(0, 2, 1)
    layers = list(transformer.layers)
    first = layers[0]
    if not first.skip_first_layer_pe:  # not SAM's layout: no sharing, the stock blocks
        keys, kpe = keys1.expand(b, -1, -1), kpe1.expand(b, -1, -1)
        queries = tokens
        for layer in layers:
            queries, keys = layer(queries=queries, keys=keys, query_pe=tokens, key_pe=kpe)
        return _final(transformer, queries, keys, tokens, kpe)
    # 1. self-attention of the tokens (no PE in SAM's first block)
    queries = first.norm1(first.self_attn(q=tokens, k=tokens, v=tokens))
    # 2. tokens attend to the image: k, v projected once for all points
    kin = keys1 + kpe1
    t2i = first.cross_attn_token_to_image
    k_shared = t2i.k_proj(kin).expand(b, -1, -1)
    v_shared = t2i.v_proj(keys1).expand(b, -1, -1)
    queries = first.norm2(queries + _attend(t2i, t2i.q_proj(queries + tokens), k_shared, v_shared))
    queries = first.norm3(queries + first.mlp(queries))
    # 3. the image attends to the tokens: its query projection once for all points
    i2t = first.cross_attn_image_to_token
    q_tok = queries + tokens
    q_img = i2t.q_proj(kin).expand(b, -1, -1)
    keys = first.norm4(keys1 + _attend(i2t, q_img, i2t.k_proj(q_tok), i2t.v_proj(queries)))
    kpe = kpe1.expand(b, -1, -1)
    for layer in layers[1:]:
        queries, keys = layer(queries=queries, keys=keys, query_pe=tokens, key_pe=kpe)
    return _final(transformer, queries, keys, tokens, kpe)


def _final(transformer, queries, keys, tokens, kpe):
    attn_out = transformer.final_attn_token_to_image(q=queries + tokens, k=keys + kpe, v=keys)
    return transformer.norm_final_attn(queries + attn_out), keys


@torch.no_grad()
def decode_points(sam, features: torch.Tensor, coords: torch.Tensor, iou_thresh: float):
    """Multimask candidates of B single positive points on one embedded image.

    features (1, C, h, w): the image embedding; coords (B, 2) points already in SAM's input
    frame (`ResizeLongestSide.apply_coords`, the dtype SAM's generator passes). Candidates are
    point-major, SAM's 3 multimask outputs per point, as `SamAutomaticMaskGenerator` orders them;
    those with IoU <= `iou_thresh` (when > 0) are dropped before any upscaling.
    -> (logits (K, h4, w4) float32, iou (K,), candidate index (K,) into the B*3 candidates)."""
    pe = sam.prompt_encoder
    dec = sam.mask_decoder
    b = coords.shape[0]
    labels = torch.ones(b, 1, dtype=torch.int, device=coords.device)
    sparse, dense = pe(points=(coords[:, None, :], labels), boxes=None, masks=None)
    out_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
    tokens = torch.cat((out_tokens.unsqueeze(0).expand(b, -1, -1), sparse), dim=1)
    image1 = features + dense[:1]  # no mask input: the dense embedding is one vector everywhere
    hs, keys = transformer_shared(dec.transformer, image1, pe.get_dense_pe(), tokens)
    iou = dec.iou_prediction_head(hs[:, 0, :])[:, 1:]  # (B, 3): multimask outputs
    keep = iou > iou_thresh if iou_thresh > 0.0 else torch.ones_like(iou, dtype=torch.bool)
    rows = keep.any(dim=1).nonzero()[:, 0]
    cand = keep.flatten().nonzero()[:, 0]
    if rows.numel() == 0:
        h4 = features.shape[-2] * 4
        return features.new_zeros((0, h4, features.shape[-1] * 4)), iou.flatten()[cand], cand
    # upscale only the points that keep a candidate (SAM's output_upscaling and hypernetworks)
    c, h, w = features.shape[1:]
    src = keys[rows].transpose(1, 2).reshape(rows.numel(), c, h, w)
    up = dec.output_upscaling(src)
    mask_tokens = hs[rows, 1: 1 + dec.num_mask_tokens, :]
    hyper = torch.stack([mlp(mask_tokens[:, i, :]) for i, mlp in enumerate(dec.output_hypernetworks_mlps)], dim=1)
    n, cu, hu, wu = up.shape
    masks = (hyper @ up.view(n, cu, hu * wu)).view(n, -1, hu, wu)[:, 1:]  # (R, 3, 256, 256): all 4 rows, as SAM (bitwise)
    sel = keep[rows]  # (R, 3)
    return masks[sel], iou.flatten()[cand], cand
