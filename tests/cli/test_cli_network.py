"""`lcd edit` with its image or mask by URL on a misbehaving server (tests/hostile_http.py): the
params file's `io` deadlines apply, the error is one line naming the URL, exit 2, no traceback."""

from __future__ import annotations

import time

import numpy as np
import pytest
import yaml
from PIL import Image

from lcd.cli import main
from tests.hostile_http import HostileServer


@pytest.mark.parametrize("which, mode, said", [("image", "never", "no answer in 1 s"),
                                                ("mask", "slow", "body exceeded 2 s")])
def test_lcd_edit_by_url_fails_in_the_params_deadline_with_one_line(tmp_path, capsys, which, mode, said):
    img, mask = tmp_path / "a.png", tmp_path / "m.png"
    Image.fromarray(np.zeros((48, 40, 3), np.uint8)).save(img)
    Image.fromarray(np.full((48, 40), 255, np.uint8)).save(mask)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"io": {
        "http_connect_timeout_s": 1, "http_first_byte_timeout_s": 1, "http_total_timeout_s": 2}}))
    with HostileServer() as srv:
        url = srv.url(f"{mode}/x.png")
        refs = {"image": str(img), "mask": str(mask), which: url}
        t0 = time.monotonic()
        rc = main(["--params", str(tmp_path / "params.yaml"), "edit", "--image", refs["image"], "--mask", refs["mask"],
                   "--prompt", "a dog", "--out", str(tmp_path / "o.png")])
        took = time.monotonic() - t0
    err = capsys.readouterr().err.strip()
    assert rc == 2 and took < 2 + 1.5, took
    assert len(err.splitlines()) == 1 and url in err and said in err and "Traceback" not in err, err
