"""`lcd concept export|import`: move concepts between our folders and diffusers' Custom Diffusion layout."""

from __future__ import annotations

import json

from lcd.commands import params_or_default


def register(sub) -> None:
    p = sub.add_parser("concept", help="export a concept to / import one from diffusers' Custom Diffusion layout")
    csub = p.add_subparsers(dest="concept_command", required=True)
    e = csub.add_parser("export", help="concept folder -> pytorch_custom_diffusion_weights.safetensors + <token>.safetensors")
    e.add_argument("concept")
    e.add_argument("--out", required=True)
    e.add_argument("--model", help="base SD the concept applies to (default: models.sd)")
    e.set_defaults(func=run_export)
    i = csub.add_parser("import", help="weights trained by diffusers' train_custom_diffusion.py -> concept folder")
    i.add_argument("folder")
    i.add_argument("--out", required=True)
    i.add_argument("--token", action="append", default=None, help="our name for each token, e.g. [P]")
    i.add_argument("--class-word", action="append", default=[], dest="class_word")
    i.set_defaults(func=run_import)


def run_export(args) -> int:
    from lcd.concepts.io import export_diffusers, load_concept, token_file_name
    from lcd.models.pipeline import load_sd

    params = params_or_default(args.params)
    concept = load_concept(args.concept)
    lp = load_sd(params.models, ref=args.model).lp
    export_diffusers(concept, lp.pipe.unet, args.out)
    print(json.dumps({"out": args.out, "token_files": {t: token_file_name(t) for t in concept.tokens}}))
    return 0


def run_import(args) -> int:
    from lcd.concepts.io import import_diffusers, save_concept

    concept = import_diffusers(args.folder, {"class_words": args.class_word}, tokens=args.token)
    save_concept(concept, args.out)
    print(json.dumps({"out": args.out, "tokens": concept.tokens, "method": concept.method}))
    return 0
