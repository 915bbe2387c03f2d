"""`lcd edit`: edit one image inside a mask from a prompt and write a PNG with its metadata."""

from __future__ import annotations

from lcd.commands import params_or_default
from lcd.errors import LcdError


def register(sub) -> None:
    p = sub.add_parser("edit", help="edit the masked region of an image from a prompt")
    p.add_argument("--image", required=True)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--mask", help="PNG mask, non-zero = edit")
    where.add_argument("--masks", help="masks table from `lcd masks compute` (folder or .parquet)")
    p.add_argument("--select", help="with --masks: largest | best | id:N | point:X,Y | box:... | text:WORDS")
    p.add_argument("--image-id", help="with --masks: the image's id in the table (default: --image)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--out", required=True, help="output PNG path")
    p.add_argument("--seed", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--guidance", type=float)
    p.add_argument("--size", type=int)
    p.add_argument("--blend-start", type=float)
    p.add_argument("--dilate", type=int, dest="dilate_px")
    p.add_argument("--feather", type=int, dest="feather_px")
    p.add_argument("--model", help="SD hub id, diffusers folder or single-file checkpoint")
    p.add_argument("--device")
    p.add_argument("--concept", action="append", default=[], metavar="DIR",
                   help="concept folder from `lcd train` (repeatable); the prompt must use its token")
    p.set_defaults(func=run)


def run(args) -> int:
    from lcd.edit.engine import EditItem, edit_images
    from lcd.io.images import check_mask_fits, load_image, load_mask, save_png
    from lcd.models.loader import load_sd_pipeline

    params = params_or_default(args.params)
    overrides = {k: getattr(args, k) for k in ("seed", "steps", "guidance", "size", "blend_start", "dilate_px", "feather_px")}
    cfg = params.edit.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    cfg = type(cfg).model_validate(cfg.model_dump())  # re-validate overridden values
    if (args.select or args.image_id) and not args.masks:
        raise LcdError("--select/--image-id need --masks (they pick a region from a masks table)", item="select")
    image = load_image(args.image)
    mask = load_mask(args.mask) if args.mask else _stored_mask(args, params, image)
    check_mask_fits(image, mask, args.image, args.mask or args.masks)
    m = params.models
    lp = load_sd_pipeline(
        args.model or m.sd, revision=m.sd_revision, dtype=m.dtype, device=args.device or m.device,
        single_file_config=m.sd_single_file_config,
    )
    required: list[str] = []
    extra: dict = {}
    if args.concept:
        from lcd.concepts.io import apply_concepts, base_mismatch, load_concept

        concepts = [load_concept(d) for d in args.concept]
        apply_concepts(lp.pipe, concepts)
        for c in concepts:
            if (msg := base_mismatch(c, lp.source)) is not None:
                print(f"warning: {msg}")
        required = [t for c in concepts for t in c.tokens]
        extra["concepts"] = [{"dir": c.name, "tokens": c.tokens, "base": c.card.get("base")} for c in concepts]
    item = EditItem(image=image, mask=mask, prompt=args.prompt, seed=cfg.seed, name=args.image)
    result = edit_images(lp, [item], cfg, required_tokens=required, extra_meta=extra)[0]
    for w in result.warnings:
        print(f"warning: {w}")
    where = {"mask": args.mask} if args.mask else {"masks": args.masks, "select": args.select or params.masks.select}
    save_png(args.out, result.image, result.meta | {"image": args.image} | where)
    print(args.out)
    return 0


def _stored_mask(args, params, image):
    """--masks/--select: the selected SAM mask of this image, holes filled and dilated per params."""
    from lcd.commands.masks import load_clip_for
    from lcd.masks.read import select_region_mask

    spec = args.select or params.masks.select
    return select_region_mask(args.masks, args.image_id or args.image, spec, params.masks,
                              clip=load_clip_for(spec, params), image=image)
