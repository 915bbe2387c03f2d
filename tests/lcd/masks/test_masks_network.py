"""`lcd masks compute` with images by URL on a misbehaving server (tests/hostile_http.py): urllib's
per-read timeout let a server dripping a byte every two seconds hold the run for hours; now the
whole transfer has a deadline (params.yaml `io`), the image fails with a line saying so, and the
images beside it are computed."""

from __future__ import annotations

import json
import time

import pandas as pd
import pytest
import yaml

from lcd.io.config import IoConfig
from lcd.masks.bulk import compute_masks
from lcd.masks.manifest import ManifestItem, fetch_bytes
from lcd.masks.store import read_failures
from tests.hostile_http import HostileServer

FAST = IoConfig(http_connect_timeout_s=1, http_first_byte_timeout_s=1, http_total_timeout_s=2)


@pytest.fixture
def srv():
    with HostileServer(drip_s=0.5) as s:
        yield s


def test_fetch_bytes_names_the_image_and_what_the_url_did(srv):
    t0 = time.monotonic()
    with pytest.raises(ValueError, match=r"^d: cannot download http://127\.0\.0\.1:\d+/slow/d\.png: body exceeded 2 s"):
        fetch_bytes(srv.url("slow/d.png"), "d", FAST)
    assert time.monotonic() - t0 < 2 + 1.0
    with pytest.raises(ValueError, match=r"^h: cannot download .*/huge/h\.png: size 2,000,000,000 over the limit of "
                                         r"1,000 bytes"):
        fetch_bytes(srv.url("huge/h.png"), "h", FAST, max_bytes=1000)  # the smaller of the two limits
    with pytest.raises(ValueError, match=r"^n: cannot download .*/404/n\.png: HTTP 404 Not Found$"):
        fetch_bytes(srv.url("404/n.png"), "n", FAST)
    assert fetch_bytes(srv.url("ok/o.png"), "o", FAST) == srv.body


@pytest.mark.slow
def test_masks_compute_ends_within_the_deadline_for_a_slow_drip_url(srv, tmp_path, tiny_dir, write_images, capsys):
    from lcd.cli import main

    (good,) = write_images(tmp_path / "img", 1)
    pd.DataFrame({"image": [str(good), srv.url("slow/drip.png"), srv.url("never/hang.png")]}).to_csv(
        tmp_path / "m.csv", index=False)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({
        "models": {"sam": str(tiny_dir / "sam" / "sam_vit_tiny.pth"), "sam_type": "vit_tiny"},
        "masks": {"auto": {"points_per_side": 2, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}},
        "io": {"http_connect_timeout_s": 1, "http_first_byte_timeout_s": 1, "http_total_timeout_s": 2}}))
    t0 = time.monotonic()
    assert main(["--params", str(tmp_path / "params.yaml"), "masks", "compute", str(tmp_path / "m.csv"),
                 "--out", str(tmp_path / "out")]) == 0
    took = time.monotonic() - t0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (summary["done"], summary["failed"]) == (1, 2)
    fails = {r["image_id"]: r for r in read_failures(tmp_path / "out").to_pylist()}
    assert "body exceeded 2 s" in fails["drip"]["error"] and fails["drip"]["error_type"] == "NetworkError"
    assert fails["hang"]["error"].endswith("no answer in 1 s")
    assert took < 2 + 1 + 10, took  # the two deadlines, plus loading the tiny SAM and one image's masks


def test_compute_masks_takes_its_limits_from_the_caller(srv, tiny_sam, fast_cfg, tmp_path):
    sam, model = tiny_sam
    t0 = time.monotonic()
    s = compute_masks([ManifestItem("drip", srv.url("slow/drip.png"))], sam, model, fast_cfg, tmp_path / "o",
                      io_cfg=FAST.model_copy(update={"http_total_timeout_s": 1}))
    assert s.failed == 1 and time.monotonic() - t0 < 1 + 1.0
    assert "body exceeded 1 s" in read_failures(tmp_path / "o").column("error")[0].as_py()
