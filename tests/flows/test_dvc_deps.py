"""dvc.yaml's deps are true: every project file a stage's command imports (directly or not, at
module level or inside a function) is listed, as itself or under a listed folder, so `dvc repro`
reruns a stage when any code it runs changes."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("lcd", "tasks", "flows")
# `python -m flows <stage>` imports flows/__main__.py, then the stage's flow module
STAGE_ENTRY = {"regset": "flows.regset", "train": "flows.train", "masks": "flows.masks",
               "edit": "flows.edit_batch", "evaluate": "flows.evaluate"}


def module_file(name: str) -> Path | None:
    """The project file of a dotted module name (a package's __init__.py), or None (third party)."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = REPO.joinpath(*name.split("."))
    for f in (base.with_suffix(".py"), base / "__init__.py"):
        if f.exists():
            return f
    return None


def imported_modules(f: Path) -> set[str]:
    """Dotted names this file imports, with `from pkg import sub` counted as pkg.sub when sub is a module."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(f.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names if module_file(f"{node.module}.{a.name}")}
    return out


def closure(entry: str) -> set[Path]:
    """Every project file imported, transitively, from `entry` (packages' __init__ files included)."""
    seen: set[Path] = {REPO / "flows" / "__main__.py"}  # the dispatcher: it imports only the stage's module
    todo = [entry]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ too
            f = module_file(".".join(parts[:i]))
            if f is not None and f not in seen:
                seen.add(f)
                todo += sorted(imported_modules(f))
    return seen


def covered(f: Path, deps: list[str]) -> bool:
    rel = f.relative_to(REPO).as_posix()
    return any(rel == d.rstrip("/") or rel.startswith(d.rstrip("/") + "/") for d in deps)


@pytest.mark.parametrize("stage", sorted(STAGE_ENTRY))
def test_stage_deps_cover_every_file_its_command_imports(stage):
    st = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage]
    assert st["cmd"] == f"python -m flows {stage}"
    deps = [d if isinstance(d, str) else next(iter(d)) for d in st["deps"]]
    missing = sorted(f.relative_to(REPO).as_posix() for f in closure(STAGE_ENTRY[stage]) if not covered(f, deps))
    assert not missing, f"dvc.yaml stage {stage!r} misses deps: {missing}"


def test_closure_follows_function_level_imports():
    files = {f.relative_to(REPO).as_posix() for f in closure("flows.edit_batch")}
    # lcd.jobs.editing imports the engine inside a function; the engine imports the sampler
    assert {"lcd/jobs/editing.py", "lcd/edit/engine.py", "lcd/edit/sampler.py", "lcd/models/loader.py",
            "lcd/masks/postprocess.py"} <= files
