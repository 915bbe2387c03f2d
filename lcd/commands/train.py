"""`lcd train`: fine-tune on concept photos and write a concept folder (+ optional diffusers export)."""

from __future__ import annotations

import json

from lcd.commands import params_or_default


def register(sub) -> None:
    p = sub.add_parser("train", help="learn a concept ([P] token + cross-attention K/V) from a few photos")
    p.add_argument("--photos", action="append", required=True, metavar="DIR",
                   help="folder of 3-20 photos of one concept (repeat for multi-concept training)")
    p.add_argument("--token", action="append", default=[], help="pseudo-word per concept, e.g. [P] (default [P], [P2], ...)")
    p.add_argument("--class-word", action="append", default=[], dest="class_word", help="class word per concept, e.g. dog")
    p.add_argument("--init-word", action="append", default=[], dest="init_word", help="word initialising each token (default: its class word)")
    p.add_argument("--out", required=True, help="concept folder to write")
    p.add_argument("--work-dir", help="checkpoints, loss curve, validation images (default: OUT/training)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in the work dir")
    p.add_argument("--export-diffusers", metavar="DIR", help="also write the stock diffusers Custom Diffusion layout")
    p.add_argument("--method", choices=["kv", "crossattn", "lora"],
                   help="what trains: cross-attention K/V, all cross-attention weights, or LoRA on K/V "
                        "(default: params.yaml train.method)")
    p.add_argument("--steps", type=int, help="optimizer steps (default: params.yaml train.steps)")
    p.add_argument("--lr", type=float, help="AdamW learning rate (default: params.yaml train.lr)")
    p.add_argument("--batch-size", type=int, dest="batch_size", help="images per batch (default: params.yaml train.batch_size)")
    p.add_argument("--resolution", type=int, help="side in pixels the photos are trained at, a multiple of 8 "
                                                  "(default: params.yaml train.resolution)")
    p.add_argument("--reg-dir", dest="reg_dir",
                   help="regularization set (folder, manifest.jsonl or --real_prior layout; "
                        "default: params.yaml train.reg_dir, unset: generated class images)")
    p.add_argument("--no-prior", action="store_true", help="no prior-preservation loss (overrides params.yaml train.prior)")
    p.add_argument("--model", help="base SD (default: params.yaml models.sd)")
    p.add_argument("--device", help="torch device, e.g. cpu, cuda, cuda:1 (default: params.yaml models.device)")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from lcd.concepts.custom_diffusion import export_diffusers
    from lcd.concepts.io import save_concept
    from lcd.errors import LcdError
    from lcd.models.pipeline import load_sd
    from lcd.train.config import ConceptSpec, TrainConfig
    from lcd.train.loop import train_concepts

    params = params_or_default(args.params)
    over = {k: getattr(args, k) for k in ("method", "steps", "lr", "batch_size", "resolution", "reg_dir")}
    over = {k: v for k, v in over.items() if v is not None}
    if args.no_prior:
        over["prior"] = False
    cfg = TrainConfig.model_validate(params.train.model_dump() | over)
    n = len(args.photos)
    for name in ("token", "class_word", "init_word"):
        got = getattr(args, name)
        if got and len(got) != n:
            raise LcdError(f"--{name.replace('_', '-')} given {len(got)} time(s) for {n} --photos folder(s)", item=name)
    if not args.class_word:
        raise LcdError("--class-word is required (the concept's class, e.g. dog)", item="class_word")
    tokens = args.token or ["[P]"] + [f"[P{i + 1}]" for i in range(1, n)]
    specs = [ConceptSpec(photos=args.photos[i], token=tokens[i], class_word=args.class_word[i],
                         init_word=args.init_word[i] if args.init_word else None) for i in range(n)]
    lp = load_sd(params.models.for_training(), ref=args.model, device=args.device).lp
    work = Path(args.work_dir) if args.work_dir else Path(args.out) / "training"
    result = train_concepts(lp, specs, cfg, work_dir=work, resume=args.resume)
    save_concept(result.concept, args.out)
    if args.export_diffusers:
        export_diffusers(result.concept, lp.pipe.unet, args.export_diffusers)
    print(json.dumps({"concept": args.out, "tokens": result.concept.tokens, "steps": len(result.losses),
                      "final_loss": result.losses[-1]["loss"], "resumed_from": result.resumed_from}))
    return 0
