"""`lcd concept merge|compress|export|import|list|show`: combine, shrink, move and inspect concepts.

merge     separately trained K/V (or LoRA) concepts -> one K/V concept (lcd.concepts.merge)
compress  a concept's K/V change -> low-rank factors by SVD (lcd.concepts.lowrank)
export    -> diffusers | kohya | lycoris-full | a1111 (lcd.concepts.export)
import    weights trained by diffusers' train_custom_diffusion.py -> concept folder
list/show tokens, class words, method, base model pin, size, rank (lcd.concepts.catalog)
"""

from __future__ import annotations

import json

from lcd.commands import params_or_default


def register(sub) -> None:
    p = sub.add_parser("concept", help="merge, compress, export, import, list or show concepts")
    csub = p.add_subparsers(dest="concept_command", required=True)
    _register_merge(csub)
    c = csub.add_parser("compress", help="store a concept's K/V change as a low-rank SVD (smaller file)")
    c.add_argument("concept", help="concept folder to compress")
    c.add_argument("--out", required=True, help="folder for the compressed concept")
    g = c.add_mutually_exclusive_group(required=True)
    g.add_argument("--rank", type=int, help="rank kept in every layer")
    g.add_argument("--energy", type=float, help="fraction of each layer's squared norm kept, e.g. 0.6")
    c.add_argument("--model", help="base SD the concept was trained on (default: params.yaml models.sd)")
    c.set_defaults(func=run_compress)
    e = csub.add_parser("export", help="write a concept for diffusers, kohya/A1111/ComfyUI LoRA, LyCORIS full, A1111 embeddings")
    e.add_argument("concept", help="concept folder to export")
    e.add_argument("--out", required=True, help="output folder for the exported files")
    e.add_argument("--format", default="diffusers", help="diffusers | kohya | lycoris-full | a1111 (default diffusers)")
    e.add_argument("--name", help="LoRA file name (default: the concept folder's name)")
    e.add_argument("--model", help="base SD the concept applies to (default: params.yaml models.sd)")
    e.set_defaults(func=run_export)
    i = csub.add_parser("import", help="weights trained by diffusers' train_custom_diffusion.py -> concept folder")
    i.add_argument("folder", help="output folder of diffusers' train_custom_diffusion.py")
    i.add_argument("--out", required=True, help="concept folder to write")
    i.add_argument("--token", action="append", default=None, help="our name for each token, e.g. [P]")
    i.add_argument("--class-word", action="append", default=[], dest="class_word",
                   help="class word of each token, e.g. dog (repeatable; recorded in the concept card)")
    i.set_defaults(func=run_import)
    ls = csub.add_parser("list", help="one line per concept folder under DIR")
    ls.add_argument("dir", help="a concept folder, or a folder whose sub-folders are concepts")
    ls.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
    ls.set_defaults(func=run_list)
    sh = csub.add_parser("show", help="everything the card and weights header say about one concept (JSON)")
    sh.add_argument("dir", help="concept folder")
    sh.set_defaults(func=run_show)


def _register_merge(csub) -> None:
    m = csub.add_parser("merge", help="merge separately trained K/V concepts into one (closed form, Custom Diffusion)")
    m.add_argument("concepts", nargs="+", help="concept folders to merge (K/V or LoRA concepts)")
    m.add_argument("--out", required=True, help="folder for the merged concept")
    src = m.add_mutually_exclusive_group()
    src.add_argument("--reg-dir", help="regularization set whose captions keep the merge close to the base")
    src.add_argument("--captions", help="text file, one caption per line (default: the bundled list)")
    m.add_argument("--template", action="append", default=None,
                   help="prompt template with {token} and {class_word} whose features are held (repeatable)")
    m.add_argument("--token", action="append", default=None,
                   help="rename the tokens, one per token of the inputs in order, e.g. --token [DOG] --token [MUG]")
    m.add_argument("--model", help="base SD the concepts were trained on (default: params.yaml models.sd)")
    m.set_defaults(func=run_merge)


def _load_base(args, concepts=()):
    from lcd.concepts.io import base_mismatch
    from lcd.models.pipeline import load_sd

    sd = load_sd(params_or_default(args.params).models, ref=args.model)
    for c in concepts:
        if (w := base_mismatch(c, sd.lp.source)) is not None:
            print(f"warning: {w}")
    return sd.lp


def _reg_captions(args) -> tuple[list[str], str]:
    from lcd.concepts.captions import CAPTIONS, read_captions

    if args.reg_dir:
        from lcd.train.data import reg_set_pairs

        return [c for _, c in reg_set_pairs(args.reg_dir, "")], args.reg_dir
    if args.captions:
        return read_captions(args.captions), args.captions
    return list(CAPTIONS), "bundled"


def run_merge(args) -> int:
    from lcd.concepts.io import load_concept, save_concept
    from lcd.concepts.merge import DEFAULT_TEMPLATES, merge_concepts, rename_tokens

    concepts = [load_concept(c) for c in args.concepts]
    if args.token:
        concepts = rename_tokens(concepts, args.token)
    captions, source = _reg_captions(args)
    lp = _load_base(args, concepts)
    merged = merge_concepts(lp.pipe, concepts, [c for c in captions if c], templates=args.template or DEFAULT_TEMPLATES,
                            reg_source=source)
    save_concept(merged, args.out)
    print(json.dumps({"out": args.out, "tokens": merged.tokens, "from": [c.name for c in concepts],
                      "reg_captions": merged.card["merge"]["reg_captions"]}))
    return 0


def run_compress(args) -> int:
    from lcd.concepts.io import load_concept, save_concept
    from lcd.concepts.lowrank import check_target, compress_concept

    check_target(args.rank, args.energy, args.concept)
    concept = load_concept(args.concept)
    lp = _load_base(args, [concept])
    small = compress_concept(concept, lp.pipe.unet, rank=args.rank, energy=args.energy)
    save_concept(small, args.out)
    comp = small.card["compression"]
    print(json.dumps({"out": args.out, "min_rank": comp["min_rank"], "max_rank": comp["max_rank"],
                      "energy_kept": round(comp["energy_kept"], 6)}))
    return 0


def run_export(args) -> int:
    from lcd.concepts.export import check_format, export_concept
    from lcd.concepts.io import load_concept

    check_format(args.format)  # before any model loads
    concept = load_concept(args.concept)
    lp = _load_base(args, [concept])
    res = export_concept(concept, lp.pipe.unet, args.out, args.format, args.name, tokenizer=lp.pipe.tokenizer)
    print(f"{args.format}: {res['note']}")  # the one line on what reads it, and whether exactly
    for tool, prompt in res["prompt"].items():
        print(f"{tool} prompt: {prompt}")
    for tok, word in res["trigger_words"].items():  # what other tools' prompts say instead of [P]
        print(f"trigger {tok}: {word}")
    print(json.dumps(dict(res, out=args.out)))
    return 0


def run_import(args) -> int:
    from lcd.concepts.custom_diffusion import import_diffusers
    from lcd.concepts.io import save_concept

    concept = import_diffusers(args.folder, {"class_words": args.class_word}, tokens=args.token)
    save_concept(concept, args.out)
    print(json.dumps({"out": args.out, "tokens": concept.tokens, "method": concept.method}))
    return 0


def run_list(args) -> int:
    from lcd.concepts.catalog import concept_summary, find_concepts, format_table

    rows = [concept_summary(f) for f in find_concepts(args.dir)]
    if args.json:
        for r in rows:
            print(json.dumps(r, sort_keys=True))
    else:
        print(format_table(rows))
    return 0


def run_show(args) -> int:
    from lcd.concepts.catalog import concept_summary
    from lcd.concepts.io import load_concept

    load_concept(args.dir)  # every file check edit-batch runs (values too), so show refuses what it would
    print(json.dumps(concept_summary(args.dir), indent=2, sort_keys=True))
    return 0
