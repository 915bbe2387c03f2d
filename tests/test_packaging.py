"""`pip install .` gives a working lcd: the wheel holds every module and the bundled configs, its
declared dependencies resolve under requirements.lock in a fresh venv, every third-party module
the code imports (at module level or inside a function) comes from a declared dependency, and the
installed wheel runs `lcd --help` and imports every module.

Why not a full install of the lock into the fresh venv: that copies ~6 GB (CUDA torch) and takes
minutes on 2 cores, and pip's resolver against the index took two of CI's minutes. Instead the
wheel's requirements are walked through the installed, lock-pinned distributions' metadata
(markers evaluated, every specifier checked, transitively), the wheel itself is installed (`--no-deps`), and
the third-party code it runs on is the already-installed, same-pinned set, made visible through
one .pth line; the import check then runs the wheel's files, not the checkout's.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("lcd", "tasks", "flows")
# optional modules not installed here: import name -> distribution, which must be a declared extra
OPTIONAL = {"bitsandbytes": "bitsandbytes"}
# img2dataset's stale `dataclasses` backport: scripts/install.sh removes it (it shadows the stdlib)
REMOVED_ON_PURPOSE = {"dataclasses"}


def lock_pins() -> dict[str, str]:
    pins = {}
    for ln in (REPO / "requirements.lock").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9._-]+)(\[[^\]]*\])?==([^\s;]+)", ln.strip())
        if m:
            pins[canon(m.group(1))] = m.group(3)
    return pins


def resolve_closure(wheel: Path) -> dict[str, str]:
    """{distribution: version} reached from the wheel's requirements through installed metadata;
    fails naming any requirement the installed (lock-pinned) set does not satisfy."""
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.requirements import Requirement

    with zipfile.ZipFile(wheel) as z:
        meta = next(z.read(n).decode() for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    todo = [Requirement(ln.split(":", 1)[1].strip()) for ln in meta.splitlines() if ln.startswith("Requires-Dist:")]
    pins, resolved, problems = lock_pins(), {}, []
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = canon(req.name)
        if name in REMOVED_ON_PURPOSE:
            continue
        try:
            dist = distribution(req.name)
        except PackageNotFoundError:
            problems.append(f"{req} (required, not installed)")
            continue
        if not req.specifier.contains(dist.version, prereleases=True):
            problems.append(f"{req} (installed {dist.version})")
        if name in pins and pins[name] != dist.version:
            problems.append(f"{name}: lock pins {pins[name]}, installed {dist.version}")
        if name not in resolved:
            resolved[name] = dist.version
            todo += [Requirement(r) for r in (dist.requires or [])]
    assert not problems, problems
    return resolved


def canon(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def third_party_imports(files: dict[str, str]) -> dict[str, set[str]]:
    """{top-level module: {files importing it}} for every non-stdlib, non-project import."""
    out: dict[str, set[str]] = {}
    for name, src in files.items():
        for node in ast.walk(ast.parse(src)):
            mods = []
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                mods = [node.module]
            for m in mods:
                top = m.split(".")[0]
                if top not in sys.stdlib_module_names and top not in PACKAGES and top != "__future__":
                    out.setdefault(top, set()).add(name)
    return out


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    # from a copy of the sources: setuptools' build/ folder keeps files deleted since the last build
    src = tmp_path_factory.mktemp("src")
    for name in PACKAGES:
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    # no build isolation: setuptools comes from the lock, nothing is fetched to build
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist),
                    str(src)], check=True, capture_output=True)
    (whl,) = dist.glob("lcdiffusion-*.whl")
    return whl


def test_wheel_holds_every_module_and_the_bundled_configs(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for pkg in PACKAGES:
        for f in (REPO / pkg).rglob("*"):
            if f.is_file() and "__pycache__" not in f.parts:
                assert f.relative_to(REPO).as_posix() in names, f"{f.relative_to(REPO)} missing from the wheel"
    assert "lcd/models/configs/sd15/unet/config.json" in names
    py = {n for n in names if n.endswith(".py")}
    ours = {f.relative_to(REPO).as_posix() for pkg in PACKAGES for f in (REPO / pkg).rglob("*.py")}
    assert py == ours, f"in the wheel but not the sources: {sorted(py - ours)[:5]}"
    assert not any(n.startswith("tests/") for n in names)


@pytest.mark.slow
def test_fresh_venv_resolves_the_declared_deps_and_runs_the_wheel(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    # the suite's PYTHONPATH holds the checkout (and its editable egg-info): not for a fresh venv
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # 1. the wheel's declared dependencies resolve under the lock: walk Requires-Dist (markers
    #    evaluated) through the installed, lock-pinned distributions; every requirement is met by
    #    the pinned version, transitively
    resolved = resolve_closure(wheel)
    assert resolved["torch"] == "2.14.1"
    # 2. every third-party import of the package comes from a resolved distribution
    z = zipfile.ZipFile(wheel)
    files = {n: z.read(n).decode() for n in z.namelist() if n.endswith(".py")}
    dists = packages_distributions()
    meta = next(z.read(n).decode() for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    extras = {canon(ln.split(":", 1)[1].split(";")[0].split(">")[0].split("=")[0].strip())
              for ln in meta.splitlines() if ln.startswith("Requires-Dist:") and "extra ==" in ln}
    undeclared = {}
    for top, where in sorted(third_party_imports(files).items()):
        owners = {canon(d) for d in dists.get(top, [])} or {canon(OPTIONAL.get(top, top))}
        if not owners & (set(resolved) | extras):
            undeclared[top] = sorted(where)[:3]
    assert not undeclared, f"imported but not resolved from pyproject's dependencies: {undeclared}"
    # 3. the wheel itself, installed: `lcd --help` and every module imports from the venv, not the checkout
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", str(wheel)],
                   check=True, capture_output=True, env=clean)
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True, env=clean).stdout.strip())
    assert (site / "lcdiffusion-0.1.0.dist-info").is_dir()
    (site / "zz-locked-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path)}
    h = subprocess.run([str(venv / "bin" / "lcd"), "--help"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert h.returncode == 0 and "edit" in h.stdout, h.stderr[-2000:]
    mods = sorted(n[:-3].replace("/", ".").removesuffix(".__init__") for n in files)
    code = ("import importlib, json, sys\n"
            f"mods = {mods!r}\n"
            "for m in mods: importlib.import_module(m)\n"
            "print(json.dumps({'n': len(mods), 'lcd': sys.modules['lcd'].__file__}))\n")
    i = subprocess.run([str(py), "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert i.returncode == 0, i.stderr[-3000:]
    got = json.loads(i.stdout.strip().splitlines()[-1])
    assert got["n"] == len(mods) > 100 and got["lcd"].startswith(str(site))


# --- the lock as pip constraints (`pip install -c requirements.lock ".[test]"`, README "Dependencies") ---

LOCK_LINE = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[A-Za-z0-9.+!_-]+)\s*(;[^#]*)?(#.*)?$")


def lock_lines() -> list[str]:
    return [ln.strip() for ln in (REPO / "requirements.lock").read_text().splitlines()
            if ln.strip() and not ln.strip().startswith("#")]


def declared_requirements() -> list:
    """pyproject's dependencies and its `test` extra (what `".[test]"` installs), as Requirements."""
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]]


def test_lock_lines_are_exact_pins_without_extras():
    """pip refuses a constraints file with extras ("Constraints cannot have extras") or with
    anything but a name and a specifier; exact pins make it a lock in both uses (-r and -c)."""
    bad = [ln for ln in lock_lines() if "[" in ln.split("#")[0] or not LOCK_LINE.match(ln)]
    assert not bad, f"requirements.lock lines that are not 'name==version' (no extras, no ranges): {bad}"
    names = [canon(LOCK_LINE.match(ln)["name"]) for ln in lock_lines()]
    assert len(names) == len(set(names)), f"pinned twice: {sorted({n for n in names if names.count(n) > 1})}"


def test_every_declared_dependency_and_every_requested_extra_is_pinned_in_the_lock():
    """Each dependency of pyproject (and of its `test` extra) is pinned in the lock at a version
    its specifier admits; an extra pyproject asks for (moto[server]) is spelled out in the lock:
    every requirement that extra adds (from the pinned release's own metadata) is pinned too."""
    from importlib.metadata import distribution

    from packaging.requirements import Requirement

    pins = lock_pins()
    missing, outside, extra_missing = [], [], []
    for req in declared_requirements():
        name = canon(req.name)
        if name not in pins:
            missing.append(str(req))
            continue
        if not req.specifier.contains(pins[name], prereleases=True):
            outside.append(f"{req} (lock pins {pins[name]})")
        for extra in req.extras:
            dist = distribution(req.name)
            assert dist.version == pins[name], f"{req.name}: installed {dist.version}, lock pins {pins[name]}"
            for r in map(Requirement, dist.requires or []):
                if r.marker is not None and r.marker.evaluate({"extra": extra}) \
                        and not r.marker.evaluate({"extra": ""}) and canon(r.name) not in pins:
                    extra_missing.append(f"{req.name}[{extra}] -> {r}")
    assert not missing, f"declared in pyproject but not pinned in requirements.lock: {missing}"
    assert not outside, f"the lock's pin is outside pyproject's specifier: {outside}"
    assert not extra_missing, f"an extra's requirements the lock does not pin: {extra_missing}"
    assert any(r.extras for r in declared_requirements()), "pyproject's test extra lost moto[server]"


def readme_constraints_command() -> list[str]:
    """The README's install line between the install-constraints markers -> pip's arguments."""
    import shlex

    readme = (REPO / "README.md").read_text()
    block = readme.split("<!-- install-constraints:start -->", 1)[1].split("<!-- install-constraints:end -->", 1)[0]
    first = next(ln for ln in block.split("```bash\n", 1)[1].splitlines() if ln.strip())
    args = shlex.split(first, comments=True)
    assert args[:2] == ["pip", "install"] and ["-c", "requirements.lock"] == args[2:4], first
    return args[2:]


def _placeholder_wheel(folder: Path, name: str, version: str) -> Path:
    """An empty wheel (metadata only) of `name`, for a requirement the environment lacks on purpose."""
    folder.mkdir(parents=True, exist_ok=True)
    info = f"{name}-{version}.dist-info"
    whl = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
    return whl


def _pip_dry_run(src: Path, args: list[str], links: Path, report: Path) -> subprocess.CompletedProcess:
    """pip's resolver on `args` in `src`, offline and hermetic: no index, no pip config, only the
    installed (lock-pinned) set and `links`; the project's metadata built without isolation."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") and k != "PYTHONPATH"}
    env |= {"PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--no-build-isolation",
           "--find-links", str(links), "--report", str(report), *args]
    return subprocess.run(cmd, cwd=src, env=env, capture_output=True, text=True, timeout=240)


@pytest.mark.slow
def test_readme_constraints_install_resolves_offline_and_the_old_lock_form_is_refused(tmp_path):
    """The README's `pip install -c requirements.lock ".[test]"`, run through pip's resolver
    (--dry-run) on a copy of the sources: it resolves with every locked package satisfied by the
    installed, pinned release (with no index, any other version would fail), so it would install
    only the project. The same command with a lock line carrying an extra (the defect) is refused,
    which shows the check can fail."""
    args = readme_constraints_command()
    src = tmp_path / "src"
    for name in PACKAGES:
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "requirements.lock"):
        shutil.copy(REPO / name, src / name)
    # img2dataset requires the `dataclasses` backport, which scripts/install.sh removes on purpose
    links = tmp_path / "links"
    _placeholder_wheel(links, "dataclasses", "0.6")
    proc = _pip_dry_run(src, args, links, tmp_path / "report.json")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    report = json.loads((tmp_path / "report.json").read_text())
    would = {canon(i["metadata"]["name"]): i["metadata"]["version"] for i in report["install"]}
    assert would.pop("lcdiffusion") == "0.1.0"
    assert set(would) <= REMOVED_ON_PURPOSE, f"not satisfied by the installed, pinned set: {would}"
    assert "Would install" in proc.stdout
    # the defect: an extra in the constraints file
    lock = (src / "requirements.lock").read_text()
    with_extra = re.sub(r"(?m)^moto==", "moto[server]==", lock)
    assert with_extra != lock
    (src / "requirements.lock").write_text(with_extra)
    bad = _pip_dry_run(src, args, links, tmp_path / "bad.json")
    assert bad.returncode != 0 and "Constraints cannot have extras" in bad.stderr, bad.stderr[-2000:]
