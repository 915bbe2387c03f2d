"""`lcd` command line. Each subcommand lives in `lcd/commands/<name>.py` with `register(sub)`.

Errors a user can cause (bad files, prompts, configs, weights) print one line and exit 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import lcd.commands
from lcd.errors import LcdError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lcd", description="LCDiffusion: local customized image editing")
    parser.add_argument("--params", default="params.yaml", help="params.yaml to read defaults from")
    sub = parser.add_subparsers(dest="command", required=True)
    for mod in sorted(pkgutil.iter_modules(lcd.commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"lcd.commands.{mod.name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (LcdError, FileNotFoundError) as e:
        print(f"lcd {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # python -m lcd.cli
    sys.exit(main())
