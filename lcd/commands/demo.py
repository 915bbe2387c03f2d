"""`lcd demo`: write the tiny models if missing and edit the bundled samples."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, ValidationError

from lcd.commands import params_or_default
from lcd.config_base import StrictConfig
from lcd.errors import LcdError


class DemoEdit(StrictConfig):
    """One entry of the --edits list; strict types, so `{"image": 5}` is refused by field, not
    turned into a path "5" or a TypeError deep in the image reader."""

    image: str = Field(min_length=1, strict=True)
    mask: str = Field(min_length=1, strict=True)
    prompt: str = Field(min_length=1, strict=True)
    seed: int = Field(0, ge=-(2**63), le=2**63 - 1, strict=True)


def read_edits(path: str | Path) -> list[DemoEdit]:
    """The --edits file -> entries; every problem is one LcdError line naming the file, the
    entry index and the field."""
    from lcd.io.documents import kind, one_line
    from lcd.io.jsonfile import read_json

    p = Path(path)
    specs = read_json(p, list, "list of {image, mask, prompt, seed} objects")
    if not specs:
        raise LcdError(f"{p}: the list of edits is empty", item=str(p))
    out = []
    for i, s in enumerate(specs):
        if not isinstance(s, dict):
            raise LcdError(f"{p}: entry {i}: must be an object with image, mask, prompt, got {kind(s)}", item=str(p))
        try:
            out.append(DemoEdit.model_validate(s))
        except ValidationError as e:
            first = e.errors()[0]
            field = ".".join(str(x) for x in first["loc"]) or "entry"
            got = "" if first["type"] == "missing" else f" (got {one_line(repr(first.get('input')), 60)})"
            raise LcdError(f"{p}: entry {i}: {field}: {one_line(first['msg'], 200)}{got}", item=f"{p}:{i}") from None
    return out


def register(sub) -> None:
    p = sub.add_parser("demo", help="edit the bundled samples with the models in params.yaml")
    p.add_argument("--edits", default="samples/edits.json", help="JSON list of {image, mask, prompt, seed}")
    p.add_argument("--out", default="outputs/demo", help="folder for the edited PNGs")
    p.add_argument("--tiny-dir", default="models/tiny", help="where tiny models are written if missing")
    p.set_defaults(func=run)


def run(args) -> int:
    from lcd.edit.engine import EditItem, edit_images
    from lcd.io.images import check_mask_fits, load_image, load_mask, save_png
    from lcd.models.pipeline import load_sd
    from lcd.models.tiny import write_tiny_models

    params = params_or_default(args.params)
    specs = read_edits(args.edits)  # before any model loads: a bad list fails in a second
    if params.models.sd.startswith(args.tiny_dir) and not (Path(args.tiny_dir) / "sd" / "model_index.json").exists():
        print(f"writing tiny models to {args.tiny_dir}")
        write_tiny_models(args.tiny_dir)
    lp = load_sd(params.models, scheduler=params.edit.scheduler).lp
    items = []
    for s in specs:
        image, mask = load_image(s.image), load_mask(s.mask)
        check_mask_fits(image, mask, s.image, s.mask)
        items.append(EditItem(image, mask, s.prompt, s.seed, s.image))
    results = edit_images(lp, items, params.edit)
    out = Path(args.out)
    for spec, item, res in zip(specs, items, results):
        path = out / f"{Path(item.name).stem}.png"
        save_png(path, res.image, res.meta | {"image": spec.image, "mask": spec.mask})
        print(f"wrote {path}")
    print(f"outputs in {out.resolve()}")
    return 0
