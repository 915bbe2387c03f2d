"""`lcd` command line. Each subcommand lives in `lcd/commands/<name>.py` with `register(sub)`.

Errors a user can cause (bad files, prompts, configs, weights) print one line and exit 2,
whatever the file holds (`user_error`); anything else is a bug and keeps its traceback.
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


class OneLineParser(argparse.ArgumentParser):
    """A usage error in one line (the command, the problem, where the help is), exit 2: argparse
    prints the usage block first, ten lines for `lcd edit`. Subcommand parsers inherit it."""

    def error(self, message: str):
        from lcd.io.documents import one_line

        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="lcd", description="LCDiffusion: local customized image editing",
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
    """One line for an error the user caused (a bad value, file or config), None for a bug.

    Besides LcdError and bad option values, the exceptions a parser raises on a hostile file that
    reached it unchecked (too deep, not UTF-8, too big, a refused pickle, a YAML or Arrow error)
    are the file's fault too: one line, never a traceback for user input."""
    from lcd.io.documents import one_line

    msg = _user_error(e)
    return None if msg is None else one_line(msg)


def _user_error(e: BaseException) -> str | None:
    import json
    import pickle

    from pydantic import ValidationError

    if isinstance(e, LcdError):
        return str(e)
    if isinstance(e, ValidationError):
        first = e.errors()[0]
        loc = [str(x) for x in first["loc"]]
        name = "--" + loc[-1].replace("_px", "").replace("_", "-") if loc else e.title
        shown = repr(first.get("input"))
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        got = "" if f"got {first.get('input')}" in first["msg"] else f"got {shown}; "
        return f"{name}: {first['msg']} ({got}in {e.title}{'.' + '.'.join(loc) if loc else ''})"
    if isinstance(e, OSError):  # a path that is a folder, under a file, unreadable, a full disk
        return f"{e.filename}: {e.strerror or e}" if e.filename else str(e)
    if isinstance(e, RecursionError):
        return "input nested too deeply to read (RecursionError)"
    if isinstance(e, MemoryError):
        return "out of memory reading the input (a file far larger than it claims?)"
    if isinstance(e, UnicodeError):
        return f"input is not UTF-8 text ({e.__class__.__name__}: {getattr(e, 'reason', e)})"
    if isinstance(e, json.JSONDecodeError):
        return f"not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})"
    if isinstance(e, pickle.UnpicklingError):
        from lcd.io.torchfile import error_line

        return error_line(e)
    if type(e).__module__.startswith("yaml"):
        mark = getattr(e, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        return f"not valid YAML{at}: {getattr(e, 'problem', None) or str(e).splitlines()[0]}"
    if type(e).__module__.startswith("pyarrow"):  # ArrowInvalid from reading a CSV or Parquet file
        return f"cannot read the table: {type(e).__name__}: {str(e)[:200]}"
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
