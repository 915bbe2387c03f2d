"""`lcd regset build|index|serve`: the regularization set and its self-hosted clip-retrieval index.

    lcd regset build --out data/regset/dog [--class-prompt dog] [--cache data/regset/.cache]
    lcd regset index --collection laion-subset-wds/ --out data/clip-index [--name regset]
    lcd regset serve --indices data/clip-index/indices_paths.json --port 1234   (127.0.0.1)

`build` prints its report as one JSON object (last line).
"""

from __future__ import annotations

import json

from pydantic import ValidationError

from lcd.commands import params_or_default
from lcd.errors import LcdError


def register(sub) -> None:
    p = sub.add_parser("regset", help="regularization set: build it, or build/serve a clip-retrieval index")
    rsub = p.add_subparsers(dest="regset_command", required=True)
    b = rsub.add_parser("build", help="CLIP-filtered real class images (+ generated shortfall)")
    b.add_argument("--out", required=True, help="regset folder (manifest.parquet, images.txt, caption.txt)")
    b.add_argument("--cache", help="cache folder (default: <out>/.cache)")
    b.add_argument("--class-prompt", dest="class_prompt",
                   help="class the images must show, e.g. dog (default: params.yaml regset.class_prompt)")
    b.add_argument("--source", choices=["metadata", "clip_back"],
                   help="candidates from metadata Parquet shards or a clip-retrieval `clip back` "
                        "(default: params.yaml regset.source)")
    b.add_argument("--shard", dest="shards", action="append",
                   help="metadata Parquet (repeatable; default: params.yaml regset.shards)")
    b.add_argument("--backend-url", dest="backend_url",
                   help="clip back URL for --source clip_back, e.g. http://127.0.0.1:1234/knn-service "
                        "(default: params.yaml regset.backend_url)")
    b.add_argument("--threshold", type=float, help="keep captions whose CLIP cosine to the class prompt exceeds "
                                                   "this, -1 to 1 (default: params.yaml regset.threshold)")
    b.add_argument("--top-n", dest="top_n", type=int, help="number of class images to collect "
                                                           "(default: params.yaml regset.top_n)")
    b.set_defaults(func=run_build)
    i = rsub.add_parser("index", help="clip inference + clip index over an img2dataset webdataset folder")
    i.add_argument("--collection", required=True, help="img2dataset webdataset folder (*.tar shards)")
    i.add_argument("--out", required=True, help="index folder (embeddings/, index/, indices_paths.json)")
    i.add_argument("--name", default="regset", help="index name in indices_paths.json (what regset.backend_index names)")
    i.add_argument("--clip-model", dest="clip_model", help="open_clip model: a folder or ARCH/weights "
                                                           "(default: params.yaml regset.clip_model)")
    i.set_defaults(func=run_index)
    s = rsub.add_parser("serve", help="serve an index with clip-retrieval's clip back endpoints")
    s.add_argument("--indices", required=True, help="indices_paths.json written by `lcd regset index`")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    s.add_argument("--port", type=int, default=1234, help="TCP port to listen on")
    s.add_argument("--clip-model", dest="clip_model", help="open_clip model that embeds queries, the one the index "
                                                           "was built with (default: params.yaml regset.clip_model)")
    s.set_defaults(func=run_serve)


def _config(args):
    params = params_or_default(args.params)
    keys = ("class_prompt", "source", "shards", "backend_url", "threshold", "top_n", "clip_model")
    overrides = {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}
    try:
        cfg = type(params.regset).model_validate(params.regset.model_dump() | overrides)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise LcdError(f"regset.{where}: {first['msg']}", item=f"regset.{where}") from None
    return params, cfg


def run_build(args) -> int:
    from pathlib import Path

    from lcd.models.pipeline import load_sd
    from lcd.regset.build import build_regset

    params, cfg = _config(args)
    report = build_regset(cfg, args.out, args.cache or Path(args.out) / ".cache", sd_ref=params.models.sd,
                          sd_variant=params.models.variant,
                          load_pipeline=lambda: load_sd(params.models).lp, io_cfg=params.io)
    print(json.dumps(report.to_dict()))
    return 0


def run_index(args) -> int:
    from lcd.regset.index import build_index

    _, cfg = _config(args)
    print(build_index(args.collection, args.out, cfg.clip_model, name=args.name))
    return 0


def run_serve(args) -> int:
    from lcd.regset.index import serve_index

    _, cfg = _config(args)
    serve_index(args.indices, cfg.clip_model, host=args.host, port=args.port)
    return 0
