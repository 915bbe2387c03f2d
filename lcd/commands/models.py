"""`lcd models tiny DIR`: write the tiny random-weight models in their real on-disk formats."""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("models", help="model utilities")
    msub = p.add_subparsers(dest="models_command", required=True)
    t = msub.add_parser("tiny", help="write tiny SD / SD-inpaint / SDXL / SDXL-inpaint / SAM / CLIP models to DIR")
    t.add_argument("dir", help="folder to write the tiny models into")
    t.add_argument("--seed", type=int, default=0, help="random seed of the tiny weights")
    t.set_defaults(func=run_tiny)


def run_tiny(args) -> int:
    from lcd.models.tiny import write_tiny_models

    paths = write_tiny_models(args.dir, seed=args.seed)
    print(json.dumps({k: str(v) for k, v in paths.items()}, indent=2))
    return 0
