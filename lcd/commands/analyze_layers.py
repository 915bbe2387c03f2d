"""`lcd analyze-layers`: fine-tune the whole UNet briefly and report how much each layer moved."""

from __future__ import annotations

from lcd.commands import params_or_default


def register(sub) -> None:
    p = sub.add_parser("analyze-layers", help="delta_l per UNet layer after full fine-tuning (paper Fig. 2)")
    p.add_argument("--photos", required=True, metavar="DIR", help="folder of photos of one concept")
    p.add_argument("--class-word", required=True, dest="class_word", help="the concept's class word, e.g. dog")
    p.add_argument("--token", default="[P]", help="pseudo-word of the concept in the training captions")
    p.add_argument("--steps", type=int, help="fine-tuning steps (default: params.yaml train.steps)")
    p.add_argument("--out", required=True, help="folder for delta_l.csv, delta_l_groups.json, delta_l.png")
    p.add_argument("--model", help="base SD: hub id, diffusers folder or single-file checkpoint "
                                   "(default: params.yaml models.sd)")
    p.add_argument("--device", help="torch device, e.g. cpu, cuda, cuda:1 (default: params.yaml models.device)")
    p.set_defaults(func=run)


def run(args) -> int:
    from lcd.models.pipeline import load_sd
    from lcd.train.analysis import GROUPS, analyze_layers, group_means, write_report
    from lcd.train.config import ConceptSpec, TrainConfig

    params = params_or_default(args.params)
    cfg = params.train.model_dump() | {"method": "full", "checkpoint_every": 0}
    if args.steps is not None:
        cfg["steps"] = args.steps
    cfg = TrainConfig.model_validate(cfg)
    spec = ConceptSpec(photos=args.photos, token=args.token, class_word=args.class_word)
    lp = load_sd(params.models, ref=args.model, device=args.device).lp
    rows = analyze_layers(lp, spec, cfg)
    paths = write_report(rows, args.out)
    means = group_means(rows)
    print(f"{'group':<16} {'layers':>6} {'mean delta_l':>13}")
    for g in GROUPS:
        print(f"{g:<16} {sum(r.group == g for r in rows):>6} {means[g]:>13.4g}")
    print(f"wrote {paths['table']}, {paths['groups']}, {paths['chart']}")
    return 0
