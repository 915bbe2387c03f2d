"""`lcd demo`: write the tiny models if missing and edit the bundled samples."""

from __future__ import annotations

import json
from pathlib import Path

from lcd.commands import params_or_default


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
    if params.models.sd.startswith(args.tiny_dir) and not (Path(args.tiny_dir) / "sd" / "model_index.json").exists():
        print(f"writing tiny models to {args.tiny_dir}")
        write_tiny_models(args.tiny_dir)
    lp = load_sd(params.models, scheduler=params.edit.scheduler).lp
    specs = json.loads(Path(args.edits).read_text())
    items = []
    for s in specs:
        image, mask = load_image(s["image"]), load_mask(s["mask"])
        check_mask_fits(image, mask, s["image"], s["mask"])
        items.append(EditItem(image, mask, s["prompt"], int(s.get("seed", 0)), s["image"]))
    results = edit_images(lp, items, params.edit)
    out = Path(args.out)
    for spec, item, res in zip(specs, items, results):
        path = out / f"{Path(item.name).stem}.png"
        save_png(path, res.image, res.meta | {"image": spec["image"], "mask": spec["mask"]})
        print(f"wrote {path}")
    print(f"outputs in {out.resolve()}")
    return 0
