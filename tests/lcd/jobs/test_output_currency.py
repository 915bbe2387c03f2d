"""An output counts as current only when it really is: a regular file (not a symlink), of non-zero
size, whole (PNG ends in IEND, WebP at its RIFF size) and made from the item's inputs. The shard
and the coordinator's check (current_report) apply the same rule; untouched outputs are neither
opened nor rewritten."""

from __future__ import annotations

import json
import os
import shutil
import struct

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from lcd.config import EditConfig, ModelsConfig
from lcd.io.encode import encode
from lcd.io.images import read_png_meta
from lcd.jobs import tables
from lcd.jobs.editing import current_report, run_edit_shard
from lcd.jobs.layout import is_current
from lcd.jobs.manifest import read_manifest

MODELS = ModelsConfig(sd="/unused/in/noop")
SHARD = "00000-of-00001"


@pytest.fixture
def job(tmp_path):
    return make_job(tmp_path)


def make_job(tmp_path):
    """Eight items on four scenes (noop engine) -> (items, out_root)."""
    rng = np.random.default_rng(0)
    for k in range(4):
        Image.fromarray(rng.integers(0, 255, (24, 20, 3), dtype=np.uint8)).save(tmp_path / f"s{k}.png")
    m = np.zeros((24, 20), np.uint8)
    m[4:16, 4:16] = 255
    Image.fromarray(m).save(tmp_path / "m.png")
    lines = [{"id": f"i{k}", "image": f"s{k % 4}.png", "mask": "m.png", "prompt": "a dog", "seed": k} for k in range(8)]
    (tmp_path / "edits.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    return read_manifest(tmp_path / "edits.jsonl")[0], tmp_path / "out"


def _run(items, out, cfg):
    rep = run_edit_shard(items, out_root=out, cfg=cfg, models=MODELS, engine="noop", shard=SHARD)
    tables.write_shard_tables(out, SHARD, rep.results, rep.failures, rep.hashes, rep.deps)
    assert rep.failures == []
    return {r["id"]: r["status"] for r in rep.results}


def _check(items, out, cfg):
    return current_report(items, out_root=out, cfg=cfg, models=MODELS, shard=SHARD, engine="noop")


def _break(edits, suffix):
    """Five kinds of broken output for i0..i4 (i5..i7 stay as written)."""
    (edits / f"i0{suffix}").unlink()
    (edits / f"i0{suffix}").symlink_to(edits / "nowhere")  # dangling symlink
    (edits / f"i1{suffix}").write_bytes(b"")  # 0 bytes
    data = (edits / f"i2{suffix}").read_bytes()
    (edits / f"i2{suffix}").write_bytes(data[: len(data) // 2])  # truncated: header and metadata still read
    shutil.copyfile(edits / f"i5{suffix}", edits / f"i3{suffix}")  # another item's image and metadata
    (edits / "elsewhere").mkdir()
    (edits / "elsewhere" / f"i4{suffix}").write_bytes((edits / f"i4{suffix}").read_bytes())
    (edits / f"i4{suffix}").unlink()
    (edits / f"i4{suffix}").symlink_to(edits / "elsewhere" / f"i4{suffix}")  # a symlink, even to a good file


@pytest.mark.parametrize("fmt", ["png", "webp"])
def test_broken_outputs_are_redone_and_untouched_ones_stay_skipped(job, fmt):
    items, out = job
    cfg = EditConfig(size=64, batch_size=4, output_format=fmt)
    suffix = "." + fmt
    assert set(_run(items, out, cfg).values()) == {"edited"}
    assert _check(items, out, cfg) is not None  # finished: the coordinator would start nothing
    edits = out / "edits"
    _break(edits, suffix)
    before = {k: os.stat(edits / f"i{k}{suffix}").st_mtime_ns for k in (5, 6, 7)}
    # the coordinator's check sees the shard is not current, for any one of the broken items
    assert _check(items, out, cfg) is None
    for k in range(5):
        assert _check([items[k], items[6]], out, cfg) is None, f"i{k}"
    assert _check(items[5:], out, cfg) is not None
    # the shard redoes exactly the broken ones
    status = _run(items, out, cfg)
    assert status == {**{f"i{k}": "edited" for k in range(5)}, **{f"i{k}": "skipped" for k in (5, 6, 7)}}
    assert {k: os.stat(edits / f"i{k}{suffix}").st_mtime_ns for k in (5, 6, 7)} == before
    for k in range(5):
        p = edits / f"i{k}{suffix}"
        assert p.is_file() and not p.is_symlink() and read_png_meta(p)["id"] == f"i{k}"
    assert set(_run(items, out, cfg).values()) == {"skipped"} and _check(items, out, cfg) is not None


def test_an_unchanged_output_is_not_opened_a_touched_one_is_checked_once(job, monkeypatch):
    """Flat cost: outputs whose size and mtime are those in the ledger are never opened; one only
    touched (same bytes, new mtime) is checked, stays skipped, and its new stamp is recorded."""
    import lcd.jobs.currency as currency

    items, out = job
    cfg = EditConfig(size=64, batch_size=4)
    _run(items, out, cfg)
    opened = []
    real = currency.is_current
    monkeypatch.setattr(currency, "is_current", lambda p, h, *a: opened.append(p.name) or real(p, h, *a))
    st = os.stat(out / "edits" / "i1.png")
    os.utime(out / "edits" / "i1.png", ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000))
    assert set(_run(items, out, cfg).values()) == {"skipped"} and opened == ["i1.png"]
    opened.clear()
    assert set(_run(items, out, cfg).values()) == {"skipped"} and opened == []


def test_a_ledger_from_before_output_stamps_checks_each_file(job):
    """A results table without output_size/output_stamp (an older run's): every output is
    checked by its own header and metadata, so a truncated one is redone, the rest skipped."""
    items, out = job
    cfg = EditConfig(size=64, batch_size=4)
    _run(items, out, cfg)
    path = tables.shard_table_path(out, "results", SHARD)
    t = tables.read_table(path, tables.RESULTS_SCHEMA).drop_columns(["output_size", "output_stamp"])
    pq.write_table(t, path)
    assert set(tables.read_ledger(path)["i0"][1:]) == {None}
    data = (out / "edits" / "i2.png").read_bytes()
    (out / "edits" / "i2.png").write_bytes(data[:-12])  # only IEND missing
    assert _check(items, out, cfg) is None
    status = _run(items, out, cfg)
    assert status.pop("i2") == "edited" and set(status.values()) == {"skipped"}


def _png(tmp_path, name="x.png", meta=None, fmt="png"):
    rgb = np.full((8, 6, 3), 120, np.uint8)
    data = encode(rgb, fmt, {"lcd": json.dumps(meta or {"input_hash": "h1"})})
    (tmp_path / name).write_bytes(data)
    return tmp_path / name, data


def test_is_current_reads_the_header_the_end_and_the_hash(tmp_path):
    p, data = _png(tmp_path)
    assert is_current(p, "h1") and not is_current(p, "h2")
    bad_crc = bytearray(data)
    bad_crc[20] ^= 1  # IHDR width changed, its CRC now wrong
    for name, blob in {"cut.png": data[:-1], "nosig.png": b"\x00" + data[1:], "crc.png": bytes(bad_crc),
                       "empty.png": b"", "text.png": b"not an image at all, but long enough " * 4}.items():
        (tmp_path / name).write_bytes(blob)
        assert not is_current(tmp_path / name, "h1"), name
    zero_w = data[:16] + struct.pack(">I", 0) + data[20:]
    (tmp_path / "zero.png").write_bytes(zero_w)
    assert not is_current(tmp_path / "zero.png", "h1")
    (tmp_path / "link.png").symlink_to(p)
    assert not is_current(tmp_path / "link.png", "h1")  # a symlink is never an output, even to a good file
    os.mkfifo(tmp_path / "fifo.png")
    assert not is_current(tmp_path / "fifo.png", "h1")  # not opened: it would block
    w, wdata = _png(tmp_path, "y.webp", fmt="webp")
    assert is_current(w, "h1")
    (tmp_path / "cut.webp").write_bytes(wdata[:-4])
    assert not is_current(tmp_path / "cut.webp", "h1")
    (tmp_path / "png-as.webp").write_bytes(data)  # a PNG under the WebP name: foreign
    assert not is_current(tmp_path / "png-as.webp", "h1")
    _png(tmp_path, "nometa.png", meta={"other": 1})
    assert not is_current(tmp_path / "nometa.png", "h1")


def test_a_same_size_replacement_with_its_mtime_put_back_is_still_redone(job):
    """A rewrite that keeps the size and resets the mtime (os.utime) still changes the ctime,
    which the ledger's stamp holds too: the output is re-checked, found foreign and redone."""
    items, out = job
    cfg = EditConfig(size=64, batch_size=4)
    _run(items, out, cfg)
    p = out / "edits" / "i0.png"
    st = os.stat(p)
    data = (out / "edits" / "i4.png").read_bytes()  # same scene and size: i4's metadata instead of i0's
    assert len(data) == st.st_size
    p.write_bytes(data)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (os.stat(p).st_size, os.stat(p).st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    assert _check(items, out, cfg) is None
    status = _run(items, out, cfg)
    assert status.pop("i0") == "edited" and set(status.values()) == {"skipped"}
    assert read_png_meta(p)["id"] == "i0"
