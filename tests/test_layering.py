"""The library never imports the orchestrator: lcd stays usable from a notebook."""

import importlib
import pkgutil
import subprocess
import sys

import lcd


def test_lcd_modules_do_not_import_prefect():
    names = [m.name for m in pkgutil.walk_packages(lcd.__path__, "lcd.") if not m.name.endswith("__main__")]
    code = (
        "import importlib, sys\n"
        f"for n in {names!r}: importlib.import_module(n)\n"
        "assert 'prefect' not in sys.modules, [m for m in sys.modules if m.startswith('prefect')][:3]\n"
        "print(len(" + repr(names) + "))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.strip()) == len(names) > 5
