"""`lcd edit`: edit one image inside a mask from a prompt and write a PNG with its metadata."""

from __future__ import annotations

from lcd.commands import params_or_default
from lcd.errors import LcdError


def register(sub) -> None:
    p = sub.add_parser("edit", help="edit the masked region of an image from a prompt")
    p.add_argument("--image", required=True, help="image file to edit")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--mask", help="PNG mask, non-zero = edit")
    where.add_argument("--masks", help="masks table from `lcd masks compute` (folder or .parquet)")
    p.add_argument("--select", help="with --masks: largest | best | id:N | point:X,Y | box:... | text:WORDS "
                                    "(default: params.yaml masks.select)")
    p.add_argument("--image-id", help="with --masks: the image's id in the table (default: the image's file stem)")
    p.add_argument("--prompt", required=True, help="what to paint in the masked region (with --concept: use its token)")
    p.add_argument("--out", required=True, help="output path: .png, or .webp for lossless WebP")
    p.add_argument("--seed", type=int, help="random seed of the initial noise (default: params.yaml edit.seed)")
    p.add_argument("--steps", type=int, help="denoising steps (default: params.yaml edit.steps)")
    p.add_argument("--scheduler", help="sampler: ddim | dpmpp_2m | euler_a | euler | pndm | unipc "
                                       "(default: params.yaml edit.scheduler)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale, 0-50 (default: params.yaml edit.guidance)")
    p.add_argument("--size", type=int, help="working size in pixels: the crop around the mask is denoised at "
                                            "SIZE x SIZE, a multiple of 8 (default: params.yaml edit.size)")
    p.add_argument("--blend-start", type=float, help="fraction of the steps (0-1) before latent blending outside "
                                                     "the mask starts (default: params.yaml edit.blend_start)")
    p.add_argument("--dilate", type=int, dest="dilate_px", help="pixels (full resolution) to grow the mask by "
                                                                "before compositing (default: params.yaml edit.dilate_px)")
    p.add_argument("--feather", type=int, dest="feather_px", help="width in pixels of the linear blend ramp outside "
                                                                  "the dilated mask (default: params.yaml edit.feather_px)")
    p.add_argument("--model", help="SD hub id, diffusers folder or single-file checkpoint (default: params.yaml models.sd)")
    p.add_argument("--variant", help="weights variant of a diffusers folder or hub id, e.g. fp16 or non_ema "
                                     "(default: params.yaml models.variant; unset: the plain files, or the "
                                     "only variant a folder has)")
    p.add_argument("--device", help="torch device, e.g. cpu, cuda, cuda:1 (default: params.yaml models.device)")
    p.add_argument("--concept", action="append", default=[], metavar="DIR",
                   help="concept folder from `lcd train` (repeatable); the prompt must use its token")
    p.set_defaults(func=run)


def _check_concepts(dirs: list[str]) -> None:
    """Each --concept is a concept folder, checked before any image or model is read."""
    from lcd.concepts.io import concept_weights_file

    for d in dirs:
        try:
            concept_weights_file(d)
        except LcdError as e:
            raise LcdError(f"--concept {e}", item=d) from None


def run(args) -> int:
    from lcd.edit.engine import EditItem, edit_images
    from lcd.io.encode import format_of
    from lcd.io.images import check_mask_fits, load_image, load_mask, save_output
    from lcd.models.pipeline import load_sd

    params = params_or_default(args.params)
    cfg = _edit_config(args, params)
    _check_out(args.out)
    if (args.select or args.image_id) and not args.masks:
        raise LcdError("--select/--image-id need --masks (they pick a region from a masks table)", item="select")
    _check_concepts(args.concept)
    image = load_image(args.image, int(cfg.max_image_mp * 1e6), limits=params.io)  # a URL: within params' io
    mask = load_mask(args.mask, limits=params.io) if args.mask else _stored_mask(args, params, image)
    check_mask_fits(image, mask, args.image, args.mask or args.masks)
    models = params.models if args.variant is None else params.models.model_copy(update={"variant": args.variant})
    sd = load_sd(models, concepts=args.concept, scheduler=cfg.scheduler, ref=args.model, device=args.device)
    for w in sd.warnings:
        print(f"warning: {w}")
    extra = {"concepts": [{"dir": c.name, "tokens": c.tokens, "base": c.card.get("base")} for c in sd.concepts]} \
        if sd.concepts else {}
    item = EditItem(image=image, mask=mask, prompt=args.prompt, seed=cfg.seed, name=args.image)
    result = edit_images(sd.lp, [item], cfg, required_tokens=sd.tokens, extra_meta=extra)[0]
    for w in result.warnings:
        print(f"warning: {w}")
    where = {"mask": args.mask} if args.mask else {"masks": args.masks, "select": args.select or params.masks.select}
    save_output(args.out, result.image, result.meta | {"image": args.image} | where, format_of(args.out),
                cfg.png_compress_level, cfg.webp_method)
    print(args.out)
    return 0


def _check_out(out: str) -> None:
    """Refuse an --out that cannot take the output before minutes of editing, not after."""
    from pathlib import Path

    from lcd.io.encode import format_of

    p = Path(out)
    if format_of(p.name) is None:
        raise LcdError(f"--out {out}: outputs are lossless PNG or WebP (the background must stay byte-identical); "
                       "name it .png or .webp", item="out")
    if p.is_dir():
        raise LcdError(f"--out {out}: is a folder; give a file name ending in .png or .webp", item="out")
    if any(q.exists() and not q.is_dir() for q in p.parents):
        raise LcdError(f"--out {out}: a parent of it is a file, not a folder", item="out")


def _edit_config(args, params):
    """params.yaml's edit section with the command-line overrides, validated (a bad value is a
    one-line error naming the option)."""
    from pydantic import ValidationError

    keys = ("seed", "steps", "guidance", "size", "blend_start", "dilate_px", "feather_px", "scheduler")
    over = {k: v for k in keys if (v := getattr(args, k)) is not None}
    try:
        return type(params.edit).model_validate(params.edit.model_dump() | over)
    except ValidationError as e:
        first = e.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else "edit"
        got = "" if f"got {over.get(name)}" in first["msg"] else f" (got {over.get(name)!r})"
        raise LcdError(f"--{name.replace('_px', '').replace('_', '-')}: {first['msg']}{got}", item=name) from None


def _stored_mask(args, params, image):
    """--masks/--select: the selected SAM mask of this image (image_id = --image-id, default the
    file stem, as the masks stage and edit-batch name images), holes filled and dilated per params."""
    from pathlib import Path

    from lcd.commands.masks import load_clip_for
    from lcd.masks.read import select_region_mask

    spec = args.select or params.masks.select
    return select_region_mask(args.masks, args.image_id or Path(args.image).stem, spec, params.masks,
                              clip=load_clip_for(spec, params), image=image)
