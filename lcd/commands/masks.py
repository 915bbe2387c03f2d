"""`lcd masks compute MANIFEST --out DIR` (bulk SAM masks -> Parquet) and
`lcd masks export DIR --image-id ID --select SPEC --out PNG` (selected region -> PNG mask)."""

from __future__ import annotations

import json

from lcd.commands import params_or_default


def register(sub) -> None:
    p = sub.add_parser("masks", help="precompute SAM masks in bulk; select and export a region")
    msub = p.add_subparsers(dest="masks_command", required=True)
    c = msub.add_parser("compute", help="SAM masks for every image of a CSV/Parquet manifest")
    c.add_argument("manifest", help="CSV or Parquet: image (path/URL), optional image_id, prompts (JSON)")
    c.add_argument("--out", required=True, help="output folder or URL (masks/part-*.parquet, failures.parquet)")
    c.add_argument("--sam", help="SAM checkpoint (default: params.yaml models.sam)")
    c.add_argument("--sam-type", help="vit_h | vit_l | vit_b | vit_t | litemedsam | vit_tiny "
                                      "(default: params.yaml models.sam_type)")
    c.add_argument("--device", help="torch device, e.g. cpu, cuda, cuda:1 (default: params.yaml models.device)")
    c.add_argument("--points-per-side", type=int,
                   help="points per side of the automatic generator's grid (default: params.yaml masks.auto.points_per_side)")
    c.add_argument("--no-auto", action="store_true", help="prompted masks only (turns off params.yaml masks.automatic)")
    c.set_defaults(func=run_compute)
    e = msub.add_parser("export", help="write the selected mask of one image as a PNG")
    e.add_argument("masks", help="masks folder or one part .parquet")
    e.add_argument("--image-id", required=True, help="the image's id in the masks table (its image_id)")
    e.add_argument("--select", help="largest | best | id:N | point:X,Y | box:X0,Y0,X1,Y1 | text:WORDS "
                                    "(default: params.yaml masks.select)")
    e.add_argument("--out", required=True, help="PNG path")
    e.add_argument("--dilate", type=int, dest="dilate_px", help="pixels to grow the mask by "
                                                                "(default: params.yaml masks.dilate_px)")
    e.add_argument("--feather", type=int, dest="feather_px", help="width in pixels of a linear ramp outside the "
                                                                  "dilated mask (default: params.yaml masks.feather_px)")
    e.set_defaults(func=run_export)


def _masks_cfg(params, args):
    cfg = params.masks
    upd: dict = {}
    if getattr(args, "points_per_side", None) is not None:  # 0 is a value to refuse, not "unset"
        upd["auto"] = cfg.auto.model_copy(update={"points_per_side": args.points_per_side}).model_dump()
    if getattr(args, "no_auto", False):
        upd["automatic"] = False
    for k in ("dilate_px", "feather_px"):
        if getattr(args, k, None) is not None:
            upd[k] = getattr(args, k)
    return type(cfg).model_validate(cfg.model_dump() | upd)  # re-validate overridden values


def load_clip_for(spec: str, params):
    """(CLIPModel, CLIPProcessor) when the selection needs text scoring, else None."""
    if not spec.strip().startswith("text:"):
        return None
    from lcd.models.loader import load_clip

    model, processor, _ = load_clip(params.models.clip, device=params.models.device)
    return model, processor


def run_compute(args) -> int:
    from lcd.jobs.masking import store_masks
    from lcd.masks.manifest import read_manifest
    from lcd.models.loader import load_clip, load_sam

    params = params_or_default(args.params)
    cfg = _masks_cfg(params, args)
    items = read_manifest(args.manifest)
    m = params.models
    sam_ref, sam_type = args.sam or m.sam, args.sam_type or m.sam_type
    sam, source = load_sam(sam_ref, sam_type, device=args.device or m.device)
    clip = None
    if any(it.prompts_json and '"text"' in it.prompts_json for it in items):
        model, processor, _ = load_clip(m.clip, device=args.device or m.device)
        clip = (model, processor)
    model_row = {"type": sam_type, "ref": source.ref, "sha256": source.sha256, "revision": source.revision}
    summary = store_masks(items, sam, model_row, cfg, args.out, clip=clip, io_cfg=params.io)  # a folder or a URL
    print(json.dumps(summary.to_dict()))
    return 0


def run_export(args) -> int:
    from lcd.masks.postprocess import mask_alpha, save_mask_png
    from lcd.masks.read import select_mask

    params = params_or_default(args.params)
    cfg = _masks_cfg(params, args)
    spec = args.select or cfg.select
    mask, row = select_mask(args.masks, args.image_id, spec, clip=load_clip_for(spec, params),
                            text_margin=cfg.text_crop_margin)
    alpha = mask_alpha(mask, fill=cfg.fill_holes, dilate_px=cfg.dilate_px, feather_px=cfg.feather_px)
    save_mask_png(args.out, alpha)
    print(json.dumps({"out": args.out, "mask_id": row["mask_id"], "source": row["source"], "area": row["area"]}))
    return 0
