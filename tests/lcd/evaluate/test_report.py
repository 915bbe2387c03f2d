"""The report: HTML + PNG + metrics.json; it renders in headless Chromium with every image loaded."""

from __future__ import annotations

import json
import math
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from lcd.errors import LcdError
from lcd.evaluate import report as R
from lcd.io.images import load_image, save_png

CHROMIUM = Path("/usr/bin/chromium")


def _sheet_files(tmp_path, n=2):
    rng = np.random.default_rng(0)
    sheets = []
    for i in range(n):
        ref = rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)
        mask = np.zeros((80, 96), bool)
        mask[20:50, 30:70] = True
        edit = ref.copy()
        edit[mask] = 255
        mask_rgb = np.repeat(mask[..., None].astype(np.uint8) * 255, 3, axis=2)
        paths = {k: save_png(tmp_path / "in" / f"{k}{i}.png", a) for k, a in (("reference", ref), ("mask", mask_rgb), ("edit", edit))}
        sheets.append({k: str(v) for k, v in paths.items()} | {"method": "m", "subject": "dog", "prompt": f"a dog {i}"})
    return sheets


def _report(tmp_path):
    table = [{"method": "class-word", "n": 4, "clip_t": 0.31, "bg_psnr": math.inf},
             {"method": "concept", "n": 4, "clip_t": 0.29, "bg_psnr": 38.5}]
    return R.write_report(
        tmp_path / "report", title="DreamBench (edit mode)", tables={"Per method": table},
        sheets=_sheet_files(tmp_path), loss_curves={"dog": [1.0, 0.7, 0.5, 0.45], "cat": [0.9, 0.8]},
        notes=["tiny random models"],
    ), table


def test_report_files_and_metrics_json(tmp_path):
    (html_path, png_path), table = _report(tmp_path)
    page = html_path.read_text()
    assert "∞" in page and "0.3100" in page and page.count("<img ") == 4
    png = load_image(png_path)
    assert png.shape[0] > 300 and png.shape[1] >= R.THUMB * 3
    strip = load_image(tmp_path / "report/images/sheet_000.png")
    assert strip.shape == (R.THUMB, 3 * R.THUMB + 8, 3)
    doc = json.loads(R.write_metrics_json(tmp_path / "metrics.json", table).read_text())
    assert doc == {"class-word": {"n": 4, "clip_t": 0.31, "bg_psnr": "inf"}, "concept": {"n": 4, "clip_t": 0.29, "bg_psnr": 38.5}}


def test_loss_plot_refuses_non_finite():
    with pytest.raises(LcdError, match="needs finite values"):
        R.loss_plot([1.0, float("nan")])


def _render(html_path: Path) -> str:
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is absent: install Debian's chromium (apt-get install -y chromium)")
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--allow-file-access-from-files", "--virtual-time-budget=10000", "--dump-dom", html_path.as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout


def _counts(dom: str) -> tuple[int, int, list[str]]:
    body = re.search(r"<body[^>]*>", dom).group(0)
    total = int(re.search(r'data-images-total="(\d+)"', body).group(1))
    loaded = int(re.search(r'data-images-loaded="(\d+)"', body).group(1))
    return total, loaded, re.findall(r'data-state="(\w+)"', dom)


def test_report_renders_in_headless_chromium_with_every_image_loaded(tmp_path):
    (html_path, _), _ = _report(tmp_path)
    total, loaded, states = _counts(_render(html_path))
    assert total == loaded == 4 and states == ["loaded"] * 4
    # the check can fail: a missing image file is reported broken
    (tmp_path / "report/images/sheet_001.png").unlink()
    total, loaded, states = _counts(_render(html_path))
    assert (total, loaded) == (4, 3) and states.count("broken") == 1


def test_dvc_metrics_show_reads_metrics_json(tmp_path):
    """`dvc metrics show` reads our metrics.json, "inf" included (in a --no-scm DVC project)."""
    import os
    import sys

    R.write_metrics_json(tmp_path / "metrics.json", [{"method": "a", "clip_t": 0.3, "bg_psnr": math.inf}])
    (tmp_path / "dvc.yaml").write_text("metrics:\n  - metrics.json\n")
    env = os.environ | {"DVC_NO_ANALYTICS": "1"}
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=tmp_path, check=True, env=env)
    out = subprocess.run([sys.executable, "-m", "dvc", "metrics", "show", "--json"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, check=True).stdout
    data = json.loads(out)[""]["data"]["metrics.json"]["data"]
    assert data == {"a": {"clip_t": 0.3, "bg_psnr": "inf"}}
