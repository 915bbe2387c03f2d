"""Self-hosted index: `lcd regset index` (clip inference + clip index) over a collection that
img2dataset fetched from 127.0.0.1, served by `lcd regset serve` (clip back endpoints) on
loopback; the regset built through it matches the metadata path on the same data."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import requests

from lcd.errors import LcdError
from lcd.regset.build import build_regset
from lcd.regset.config import RegsetConfig
from lcd.regset.index import build_index, serve_index
from lcd.regset.manifest import read_manifest
from lcd.regset.sources import query_clip_back

CAPTIONS = ["a photo of a dog", "a dog in the grass", "my dog", "dog portrait", "a small dog", "a happy dog"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _lcd(*args, cwd):
    (cwd / "defaults.yaml").write_text("")  # an empty params file: the built-in defaults
    return [sys.executable, "-m", "lcd", "--params", str(cwd / "defaults.yaml"), *args]


@pytest.mark.slow
@pytest.mark.server
def test_clip_back_over_self_hosted_index_matches_metadata_path(tmp_path, photo_server, tiny_open_clip, write_shard):
    from img2dataset import download

    base, names = photo_server
    photos = names[: len(CAPTIONS)]
    urls = [f"{base}/{n}" for n in photos]
    caps = CAPTIONS[: len(photos)]
    meta = write_shard(tmp_path / "meta" / "part-0.parquet", urls, caps)
    # 1. the user's collection: img2dataset webdataset from the local server
    download(url_list=str(meta), input_format="parquet", url_col="url", caption_col="caption",
             output_folder=str(tmp_path / "coll"), output_format="webdataset", image_size=64,
             resize_mode="center_crop", processes_count=1, thread_count=4, timeout=2,
             enable_wandb=False, disallowed_header_directives=[])
    # 2. the index command
    out = subprocess.run(_lcd("regset", "index", "--collection", str(tmp_path / "coll"), "--out",
                              str(tmp_path / "idx"), "--clip-model", str(tiny_open_clip), cwd=tmp_path),
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    indices = tmp_path / "idx" / "indices_paths.json"
    assert out.stdout.strip().endswith(str(indices))
    assert (tmp_path / "idx" / "index" / "text.index").exists()
    # 3. clip back on loopback
    port = _free_port()
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen(_lcd("regset", "serve", "--indices", str(indices), "--port", str(port),
                                 "--clip-model", str(tiny_open_clip), cwd=tmp_path),
                            cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:
        backend = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                if requests.get(f"{backend}/indices-list", timeout=2).json() == ["regset"]:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, "clip back did not come up in 90 s"
            time.sleep(0.5)
        got = query_clip_back(f"{backend}/knn-service", "regset", "dog", num_results=50)
        assert sorted(got.urls) == sorted(urls)  # every indexed caption comes back, with its URL
        assert dict(zip(got.urls, got.captions)) == dict(zip(urls, caps))
        assert np.all(np.diff(got.similarity) <= 1e-6)
        # 4. the same regset both ways: threshold drops the lowest, top-N cuts one more
        sims = np.sort(got.similarity)
        common = dict(class_prompt="dog", clip_model=str(tiny_open_clip), threshold=float((sims[0] + sims[1]) / 2),
                      top_n=len(urls) - 2, image_size=64, min_image_size=32, timeout_s=2, threads=4,
                      generate_shortfall=False)
        via_meta = RegsetConfig(source="metadata", shards=[str(meta)], **common)
        via_back = RegsetConfig(source="clip_back", backend_url=f"{backend}/knn-service", **common)
        rep_m = build_regset(via_meta, tmp_path / "rs-meta", tmp_path / "cache")
        rep_b = build_regset(via_back, tmp_path / "rs-back", tmp_path / "cache")
        assert rep_m.selected == rep_b.selected == len(urls) - 2
        rows_m, rows_b = read_manifest(tmp_path / "rs-meta"), read_manifest(tmp_path / "rs-back")
        key = ("url", "caption", "sha256")
        assert [tuple(r[k] for k in key) for r in rows_m] == [tuple(r[k] for k in key) for r in rows_b]
        np.testing.assert_allclose([r["similarity"] for r in rows_m], [r["similarity"] for r in rows_b], atol=1e-4)
        assert {r["source"] for r in rows_b} == {"clip_back"}
        assert rep_b.downloads_attempted == 0  # same URLs: the metadata run already fetched them
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_index_and_serve_errors(tmp_path, tiny_open_clip):
    with pytest.raises(LcdError, match="no webdataset shards"):
        build_index(tmp_path, tmp_path / "idx", str(tiny_open_clip))
    with pytest.raises(LcdError, match="indices file not found"):
        serve_index(tmp_path / "nope.json", str(tiny_open_clip))


def test_clip_back_unreachable_is_a_clear_error():
    with pytest.raises(LcdError, match="clip back query failed"):
        query_clip_back(f"http://127.0.0.1:{_free_port()}/knn-service", "regset", "dog", 10)
