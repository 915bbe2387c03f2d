"""`lcd edit`: edit one image inside a mask from a prompt and write a PNG with its metadata."""

from __future__ import annotations

from lcd.commands import params_or_default


def register(sub) -> None:
    p = sub.add_parser("edit", help="edit the masked region of an image from a prompt")
    p.add_argument("--image", required=True)
    p.add_argument("--mask", required=True, help="PNG mask, non-zero = edit")
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
    image, mask = load_image(args.image), load_mask(args.mask)
    check_mask_fits(image, mask, args.image, args.mask)
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
    save_png(args.out, result.image, result.meta | {"image": args.image, "mask": args.mask})
    print(args.out)
    return 0
