"""`lcd masks compute` keeps what it finished: a kill loses only the image in flight.

Before, finished images sat in memory until `masks.images_per_part` (64) of them were done, so
a run of fewer images killed while a slow URL held it stored nothing. Now every finished image
is written at once (a one-image checkpoint part, merged into whole parts as they fill), and a
re-run computes only what is not stored.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from lcd.masks.store import MASK_SCHEMA, done_images, part_paths


class _Gate:
    """A 127.0.0.1 server whose one image answers only once `open` is set (until then it holds
    the request, as a server that never answers does)."""

    def __init__(self, body: bytes):
        gate = self
        self.open = threading.Event()
        self.body = body

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                gate.open.wait(120)
                try:
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(gate.body)))
                    self.end_headers()
                    self.wfile.write(gate.body)
                except OSError:  # the client was killed while it waited
                    pass

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/{name}"

    def close(self):
        self.open.set()
        self.server.shutdown()
        self.server.server_close()


def _images(root, n):
    rng = np.random.default_rng(0)
    root.mkdir()
    paths = []
    for i in range(n):
        a = (rng.random((48, 64, 3)) * 80).astype(np.uint8)
        a[8 + i:30, 10:40 + i] = 230
        paths.append(root / f"img{i}.png")
        Image.fromarray(a).save(paths[-1])
    return paths


def _ids(out):
    t = pq.read_table(out / "masks", schema=MASK_SCHEMA, columns=["image_id", "mask_id"])
    return list(zip(t.column("image_id").to_pylist(), t.column("mask_id").to_pylist()))


@pytest.mark.slow
def test_a_killed_compute_keeps_its_finished_images_and_the_rerun_does_the_rest(tmp_path, tiny_dir):
    imgs = _images(tmp_path / "imgs", 4)
    gate = _Gate(imgs[2].read_bytes())
    try:
        # img0, img1 local; img2 by a URL that holds the run; img3 local after it
        images = [str(imgs[0]), str(imgs[1]), gate.url("img2.png"), str(imgs[3])]
        pd.DataFrame({"image": images}).to_csv(tmp_path / "m.csv", index=False)
        params = {
            "models": {"sd": str(tiny_dir / "sd"), "sam": str(tiny_dir / "sam" / "sam_vit_tiny.pth"), "sam_type": "vit_tiny"},
            # images_per_part stays 64: before, nothing of a 4-image run was stored until its end
            "masks": {"auto": {"points_per_side": 2, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}},
            "io": {"http_first_byte_timeout_s": 600, "http_total_timeout_s": 1200},
        }
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
        out = tmp_path / "out"
        cmd = [sys.executable, "-m", "lcd", "--params", str(tmp_path / "params.yaml"), "masks", "compute",
               str(tmp_path / "m.csv"), "--out", str(out)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ.copy())
        try:
            # 1. wait until the two images before the held URL are stored, then kill (no cleanup, like an OOM kill)
            deadline = time.monotonic() + 240
            while len(done_images(out)) < 2 and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
            assert proc.poll() is None, proc.communicate()[1].decode()[-3000:]
            assert {k[0] for k in done_images(out)} == {"img0", "img1"}
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
        assert proc.returncode == -signal.SIGKILL
        # 2. what it finished is there, whole, readable by pandas; no temp file is visible
        stored = _ids(out)
        assert {i for i, _ in stored} == {"img0", "img1"} and len(stored) == len(set(stored))
        assert all(p.name.startswith("part-") for p in (out / "masks").iterdir())
        # 3. the re-run (the URL answers now) computes only the two images not stored
        gate.open.set()
        rerun = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy(), timeout=300)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        summary = json.loads(rerun.stdout.strip().splitlines()[-1])
        assert (summary["done"], summary["skipped"], summary["failed"], summary["encoder_passes"]) == (2, 2, 0, 2)
        assert "2 computed" in rerun.stderr and "2 already stored" in rerun.stderr  # the closing progress line
    finally:
        gate.close()
    final = _ids(out)
    assert {i for i, _ in final} == {"img0", "img1", "img2", "img3"} and len(final) == len(set(final))
    assert set(stored) <= set(final)
    # a finished run leaves whole parts, not one checkpoint per image: the re-run's 2 images are one part
    assert len(done_images(out)) == 4 and len(part_paths(out)) == 3


@pytest.mark.slow
def test_checkpoints_merge_into_whole_parts_and_a_stored_image_leaves_the_failures(tiny_sam, fast_cfg, tmp_path,
                                                                                   write_images):
    """images_per_part 3: each image is on disk when reported, whole parts replace the
    checkpoints, and an image that failed before and is stored now is no longer listed as failed."""
    from lcd.masks.bulk import compute_masks
    from lcd.masks.manifest import ManifestItem
    from lcd.masks.store import read_failures

    sam, model = tiny_sam
    cfg = fast_cfg.model_copy(update={"images_per_part": 3, "automatic": False})
    imgs = write_images(tmp_path / "imgs", 5)
    out = tmp_path / "out"
    late = tmp_path / "imgs" / "late.png"
    prompts = json.dumps([{"box": [8, 6, 45, 32]}])
    items = [ManifestItem(p.stem, str(p), prompts) for p in imgs] + [ManifestItem("late", str(late), prompts)]
    s = compute_masks(items, sam, model, cfg, out)
    assert (s.done, s.failed) == (5, 1) and read_failures(out).column("image_id").to_pylist() == ["late"]
    assert len(part_paths(out)) == 2 and len(s.parts) == 2  # 3 + 2 images; no checkpoint left
    seen = []

    def after(image_id):
        seen.append((image_id, set(k[0] for k in done_images(out)), len(part_paths(out))))

    late.write_bytes(imgs[0].read_bytes())
    s = compute_masks(items, sam, model, cfg, out, after_image=after)
    assert (s.done, s.skipped) == (1, 5)
    assert seen[0][0] == "late" and "late" in seen[0][1] and seen[0][2] == 3  # stored (a checkpoint) when reported
    assert read_failures(out).num_rows == 0
    assert len(part_paths(out)) == 3  # the checkpoint became a whole part
