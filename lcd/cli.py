"""`lcd` command line. Each subcommand lives in `lcd/commands/<name>.py` with `register(sub)`.

Errors a user can cause (bad files, prompts, configs, weights) print one line and exit 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

import lcd.commands
from lcd.errors import LcdError


PARAMS_HELP = "params file to read settings from (default: ./params.yaml if present, else built-in defaults)"


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Appends " (default: X)" to an option's help when X says something: not None (the value
    then comes from params.yaml, which the help says), not an empty list, not a flag's False,
    and not when the help already names its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help = action.help or ""
        d = action.default
        if (d is None or d is argparse.SUPPRESS or "default" in help.lower()
                or (action.nargs == 0 and isinstance(d, bool)) or (isinstance(d, (list, tuple)) and not d)):
            return help
        if not action.option_strings and action.nargs not in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return help  # a required positional's default is never used
        return help + " (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lcd", description="LCDiffusion: local customized image editing",
                                     formatter_class=DefaultsHelpFormatter)
    parser.add_argument("--params", default=None, help=PARAMS_HELP)
    sub = parser.add_subparsers(dest="command", required=True)
    for mod in sorted(pkgutil.iter_modules(lcd.commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"lcd.commands.{mod.name}").register(sub)
    _params_everywhere(parser)
    return parser


def _params_everywhere(parser: argparse.ArgumentParser) -> None:
    """`--params` accepted after any (sub)command too: `lcd train --params demo.yaml ...`; and
    every subparser's --help shows the defaults (DefaultsHelpFormatter)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for p in action.choices.values():
                p.formatter_class = DefaultsHelpFormatter
                if "--params" not in p._option_string_actions:
                    p.add_argument("--params", default=argparse.SUPPRESS, help=PARAMS_HELP)
                _params_everywhere(p)


def user_error(e: BaseException) -> str | None:
    """One line for an error the user caused (a bad value, file or config), None for a bug."""
    from pydantic import ValidationError

    if isinstance(e, LcdError):
        return str(e)
    if isinstance(e, ValidationError):
        first = e.errors()[0]
        loc = [str(x) for x in first["loc"]]
        name = "--" + loc[-1].replace("_px", "").replace("_", "-") if loc else e.title
        got = "" if f"got {first.get('input')}" in first["msg"] else f"got {first.get('input')!r}; "
        return f"{name}: {first['msg']} ({got}in {e.title}{'.' + '.'.join(loc) if loc else ''})"
    if isinstance(e, OSError):  # a path that is a folder, under a file, unreadable, a full disk
        return f"{e.filename}: {e.strerror or e}" if e.filename else str(e)
    return None


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at each line (a captured or replaced stderr included)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def show_progress() -> None:
    """Print lcd's progress and summary lines (the `lcd` loggers, INFO) on stderr, once."""
    log = logging.getLogger("lcd")
    if not any(isinstance(h, _StderrHandler) for h in log.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    show_progress()
    try:
        return int(args.func(args) or 0)
    except Exception as e:  # noqa: BLE001 - user errors become one line; bugs keep their traceback
        msg = user_error(e)
        if msg is None:
            raise
        print(f"lcd {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # python -m lcd.cli
    sys.exit(main())
