"""An edit shard whose inputs are URLs on a misbehaving server (tests/hostile_http.py): every bad
URL is its own named failure row within its deadline, the good items beside them are edited, and
the shard never raises. Through the task too, with the deadlines from params.yaml's `io`."""

from __future__ import annotations

import time

import numpy as np
import pytest
import yaml
from PIL import Image

from lcd.config import EditConfig, ModelsConfig
from lcd.io.config import IoConfig
from lcd.jobs.editing import run_edit_shard
from lcd.jobs.manifest import ManifestItem
from tests.hostile_http import HostileServer

CFG = EditConfig(size=64, batch_size=2, dilate_px=2, feather_px=2)
FAST = IoConfig(http_connect_timeout_s=1, http_first_byte_timeout_s=1, http_total_timeout_s=2,
                http_max_bytes=1_000_000)
MARGIN = 1.5  # seconds beyond the deadlines the whole shard may take (tiny images, noop engine)

# mode -> (what its failure row says, stage, the seconds it may cost: its deadline)
BAD = {
    "never": ("no answer in 1 s", "input", 1.0),
    "stall": ("no answer in 1 s after 0 of 1,000 bytes", "input", 1.0),
    "slow": ("body exceeded 2 s", "input", 2.0),
    "endless": ("body over the limit of 1,000,000 bytes", "input", 0.5),
    "huge": ("size 2,000,000,000 over the limit of 1,000,000 bytes", "input", 0.2),
    "short": ("connection closed after 2,938 of 5,876 bytes", "input", 0.2),
    "second": ("connection closed after 1,958 of 5,876 bytes", "input", 0.2),  # hashed whole, cut when read
    "404": ("file not found (HTTP 404 Not Found)", "input", 0.2),
    "loop": ("redirect loop or too many redirects", "input", 0.2),
}


@pytest.fixture
def srv():
    with HostileServer() as s:
        yield s


def _local(tmp_path) -> list[ManifestItem]:
    rng = np.random.default_rng(1)
    out = []
    for k in range(2):
        p = tmp_path / f"local{k}.png"
        Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(p)
        out.append(ManifestItem(id=f"local{k}", image=str(p), select="box:0,0,20,20", prompt="a dog"))
    return out


def test_each_bad_url_is_its_own_failure_row_and_the_good_items_are_edited(srv, tmp_path):
    bad = [ManifestItem(id=m, image=srv.url(f"{m}/{m}.png"), select="box:0,0,8,8", prompt="x") for m in BAD]
    good = _local(tmp_path) + [ManifestItem(id="web", image=srv.url("ok/web.png"), select="box:0,0,8,8", prompt="x")]
    mask_by_url = ManifestItem(id="maskurl", image=str(tmp_path / "local0.png"), mask=srv.url("never/m.png"), prompt="x")
    items = [good[0], *bad[:5], good[1], *bad[5:], good[2], mask_by_url]
    t0 = time.monotonic()
    rep = run_edit_shard(items, out_root=tmp_path / "out", cfg=CFG, models=ModelsConfig(), engine="noop", io_cfg=FAST)
    took = time.monotonic() - t0
    assert sorted(r["id"] for r in rep.results if r["status"] == "edited") == ["local0", "local1", "web"]
    assert all((tmp_path / "out" / "edits" / f"{i}.png").is_file() for i in ("local0", "local1", "web"))
    rows = {f["id"]: f for f in rep.failures}
    assert sorted(rows) == sorted([*BAD, "maskurl"])
    for mode, (said, stage, _) in BAD.items():
        url = srv.url(f"{mode}/{mode}.png")
        row = rows[mode]
        assert row["message"].startswith(f"{url}: ") and said in row["message"], row["message"]
        assert row["stage"] == stage and row["item"] == url and "\n" not in row["message"]
        assert row["error"] in ("NetworkError", "InputImageError")
    assert rows["maskurl"]["message"] == f"{srv.url('never/m.png')}: no answer in 1 s"
    # the URLs are hashed at once: the shard costs about the longest deadline, not their sum
    assert took < max(d for *_, d in BAD.values()) + MARGIN, took


def test_the_task_takes_the_deadlines_from_params_io(srv, tmp_path):
    """edit_shard reads `io` from params.yaml: a URL that never answers costs 1 s, not aiohttp's 300 s."""
    import json

    from tasks.edit import edit_shard, plan_manifest

    local = _local(tmp_path)[0]
    lines = [local.model_dump(exclude_none=True),
             {"id": "hang", "image": srv.url("never/h.png"), "select": "box:0,0,8,8", "prompt": "x"},
             {"id": "drip", "image": srv.url("slow/d.png"), "select": "box:0,0,8,8", "prompt": "x"}]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({
        "models": {"sd": "/unused/in/noop"}, "edit": {"size": 64},
        "io": {"http_connect_timeout_s": 1, "http_first_byte_timeout_s": 1, "http_total_timeout_s": 2}}))
    out = str(tmp_path / "out")
    assert plan_manifest.fn(str(tmp_path / "m.jsonl"), out, 1)["items"] == 3
    t0 = time.monotonic()
    counts = edit_shard.fn(str(tmp_path / "m.jsonl"), out, 0, 1, str(tmp_path / "params.yaml"), None, "noop", None)
    assert (counts["edited"], counts["failed"]) == (1, 2)
    assert time.monotonic() - t0 < 2 + MARGIN
    import pyarrow.parquet as pq

    fails = {r["id"]: r["message"] for r in pq.read_table(tmp_path / "out" / "tables" /
                                                         "failures-00000-of-00001.parquet").to_pylist()}
    assert fails["hang"].endswith("no answer in 1 s") and "body exceeded 2 s" in fails["drip"]


def test_a_shard_of_many_dead_urls_waits_about_one_deadline(srv, tmp_path):
    """Twenty URLs that never answer, hashed at once: ~1 s for the shard, not 20 s, and each is
    its own failure row beside the good item."""
    dead = [ManifestItem(id=f"d{k}", image=srv.url(f"never/{k}.png"), select="box:0,0,8,8", prompt="x")
            for k in range(20)]
    t0 = time.monotonic()
    rep = run_edit_shard([*dead, _local(tmp_path)[0]], out_root=tmp_path / "out", cfg=CFG, models=ModelsConfig(),
                         engine="noop", io_cfg=FAST)
    took = time.monotonic() - t0
    assert [r["id"] for r in rep.results] == ["local0"] and len(rep.failures) == 20
    assert all(f["message"].endswith("no answer in 1 s") for f in rep.failures)
    assert took < 2 * 1.0 + MARGIN, took  # 16 at a time: two rounds of the 1 s first-byte limit
