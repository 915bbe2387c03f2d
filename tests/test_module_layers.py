"""The house's shape, held by tests: layers import only downward, one place loads Stable Diffusion
from configuration, one list of image suffixes, and no function in lcd/ past ~60 lines."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LCD = REPO / "lcd"
# bottom to top; a module may import its own layer and the ones below
LAYERS = [
    {"lcd", "errors", "config_base", "progress"},
    {"io"},
    {"concepts"},
    {"models", "masks"},
    {"edit", "train", "regset"},
    {"evaluate"},
    {"config", "jobs"},
    {"commands", "cli", "__main__"},
]
# inside lcd.models: readers of files and names < the loader < what builds on it
MODELS_ORDER = [
    {"__init__", "sources", "config", "tokenizer", "schedulers", "bundled", "trust", "layout", "remote",
     "sam_builders"},
    {"resolve"},
    {"encoders"},
    {"loader"},
    {"pipeline", "tiny", "ldm_format", "sdxl_tiny"},
]


def _layer(name: str, layers: list[set[str]]) -> int:
    return next(i for i, names in enumerate(layers) if name in names)


def _lcd_imports(path: Path) -> list[tuple[int, str]]:
    """(line, dotted lcd module) for every import in the file, module level or inside functions."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "lcd" and node.level == 0:
            out.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "lcd"]
    return out


def _top(rel: Path) -> str:
    if len(rel.parts) > 1:
        return rel.parts[0]
    return "lcd" if rel.stem == "__init__" else rel.stem


def test_lcd_layers_import_only_downward():
    bad = []
    for f in sorted(LCD.rglob("*.py")):
        rel = f.relative_to(LCD)
        src = _top(rel)
        for line, mod in _lcd_imports(f):
            parts = mod.split(".")
            dst = parts[1] if len(parts) > 1 else "lcd"
            if _layer(dst, LAYERS) > _layer(src, LAYERS):
                bad.append(f"lcd/{rel}:{line} imports {mod} (layer {dst} is above {src})")
            if src == dst == "models" and len(parts) > 2 and len(rel.parts) == 2:
                if _layer(parts[2], MODELS_ORDER) > _layer(rel.stem, MODELS_ORDER):
                    bad.append(f"lcd/{rel}:{line} imports {mod} (above {rel.stem} inside lcd.models)")
    assert not bad, "\n".join(bad)


def test_every_lcd_package_has_a_layer():
    tops = {_top(f.relative_to(LCD)) for f in LCD.rglob("*.py")}
    assert tops <= set().union(*LAYERS), tops - set().union(*LAYERS)


def test_stable_diffusion_loads_from_config_in_one_place():
    """`load_sd_pipeline` (the loader of one reference) is called only by `load_sd`; every
    command, job, task and flow goes through `load_sd(models_cfg, ...)`."""
    callers = []
    for root in ("lcd", "tasks", "flows"):
        for f in sorted((REPO / root).rglob("*.py")):
            for node in ast.walk(ast.parse(f.read_text())):
                if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) == "load_sd_pipeline":
                    callers.append(str(f.relative_to(REPO)))
    assert callers == ["lcd/models/pipeline.py"]


def test_one_image_suffix_list():
    hits = []
    for root in ("lcd", "tasks", "flows"):
        for f in sorted((REPO / root).rglob("*.py")):
            for node in ast.walk(ast.parse(f.read_text())):
                if isinstance(node, ast.Tuple) and {".jpg", ".png"} <= {getattr(e, "value", None) for e in node.elts}:
                    hits.append(f"{f.relative_to(REPO)}:{node.lineno}")
    assert len(hits) == 1 and hits[0].startswith("lcd/io/images.py"), hits


def test_no_function_in_lcd_is_longer_than_60_lines():
    long = []
    for f in sorted(LCD.rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60:
                long.append(f"{f.relative_to(REPO)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long, long
