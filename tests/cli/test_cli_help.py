"""`lcd ... --help`: every option and positional says what it is, and defaults are shown where
they say something (a concrete value; None means "from params.yaml", which the help says)."""

import argparse
import subprocess
import sys

import pytest

from lcd.cli import DefaultsHelpFormatter, build_parser


def _parsers(parser=None, path=("lcd",)):
    """(command path, parser) for the top parser and every (nested) subparser."""
    parser = parser or build_parser()
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, path + (name,))


def _flat(text: str) -> str:
    return " ".join(text.split())  # help wraps at the terminal width


PARSERS = list(_parsers())


def test_every_option_and_positional_has_help():
    missing = [f"{' '.join(path)} {'/'.join(a.option_strings) or a.dest}"
               for path, p in PARSERS for a in p._actions
               if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))
               and not (a.help or "").strip()]
    assert not missing, missing


def test_every_subparser_shows_defaults():
    assert all(p.formatter_class is DefaultsHelpFormatter for _, p in PARSERS)


@pytest.mark.parametrize("path,parser", PARSERS, ids=[" ".join(p) for p, _ in PARSERS])
def test_help_never_shows_an_empty_default(path, parser):
    text = _flat(parser.format_help())
    for noise in ("(default: None)", "(default: [])", "(default: False)", "(default: ==SUPPRESS==)"):
        assert noise not in text, f"{' '.join(path)}: {noise}"


def test_concrete_defaults_are_shown_once():
    helps = {" ".join(path): _flat(p.format_help()) for path, p in PARSERS}
    assert "TCP port to listen on (default: 1234)" in helps["lcd regset serve"]
    assert "folder for the edited PNGs (default: outputs/demo)" in helps["lcd demo"]
    assert "random seed of the tiny weights (default: 0)" in helps["lcd models tiny"]
    # help that already names its default gets no second one
    assert "(default diffusers)" in helps["lcd concept export"]
    assert "(default: diffusers)" not in helps["lcd concept export"]
    assert helps["lcd edit"].count("(default: ./params.yaml") == 1


def test_edit_help_in_a_real_process():
    r = subprocess.run([sys.executable, "-m", "lcd", "edit", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    out = _flat(r.stdout)
    assert "denoising steps (default: params.yaml edit.steps)" in out
    assert "(default: params.yaml models.device)" in out
    assert "(default: None)" not in out
    r = subprocess.run([sys.executable, "-m", "lcd", "demo", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "(default: outputs/demo)" in _flat(r.stdout), r.stderr[-2000:]
