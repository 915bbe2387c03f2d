"""run_edit_shard on the tiny SD: per-item failures, skip when current, redo when anything changed."""

import json

import numpy as np
import pytest
from PIL import Image

from lcd.config import EditConfig, ModelsConfig
from lcd.io.images import load_image, read_png_meta
from lcd.jobs.editing import run_edit_shard
from lcd.jobs.hashes import item_hash
from lcd.jobs.manifest import read_manifest

CFG = EditConfig(steps=2, size=64, batch_size=2, dilate_px=2, feather_px=2)


@pytest.fixture
def job(tmp_path):
    rng = np.random.default_rng(0)
    for k in range(3):
        Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(tmp_path / f"s{k}.png")
    m = np.zeros((48, 40), np.uint8)
    m[10:30, 8:30] = 255
    Image.fromarray(m).save(tmp_path / "m.png")
    Image.fromarray(m[:20]).save(tmp_path / "small.png")
    lines = [
        {"id": "a", "image": "s0.png", "mask": "m.png", "prompt": "a dog", "seed": 1},
        {"id": "b", "image": "s1.png", "select": "box:0,0,20,20", "prompt": "a cat"},
        {"id": "c", "image": "s2.png", "mask": "m.png", "prompt": "a teapot"},
        {"id": "gone", "image": "nope.png", "mask": "m.png", "prompt": "x"},
        {"id": "size", "image": "s0.png", "mask": "small.png", "prompt": "x"},
        {"id": "tok", "image": "s0.png", "mask": "m.png", "prompt": "a [P] dog"},
        {"id": "concept", "image": "s0.png", "mask": "m.png", "prompt": "a [P] dog", "concept": "dog"},
    ]
    (tmp_path / "edits.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    return read_manifest(tmp_path / "edits.jsonl")[0], tmp_path


def test_bad_items_fail_alone_and_good_ones_are_edited(job, tiny_dir):
    items, root = job
    models = ModelsConfig(sd=str(tiny_dir / "sd"))
    rep = run_edit_shard(items, out_root=root / "out", cfg=CFG, models=models, concepts_root=root / "concepts")
    assert sorted(r["id"] for r in rep.results) == ["a", "b", "c"]
    fails = {f["id"]: f for f in rep.failures}
    assert "nope.png: file not found" in fails["gone"]["message"]
    assert "mask is 40x20 but image" in fails["size"]["message"]
    assert "concept token [P] that no loaded concept defines" in fails["tok"]["message"]
    assert "weights folder" in fails["concept"]["message"] and fails["concept"]["stage"] == "input"
    out = load_image(root / "out" / "edits" / "a.png")
    src = load_image(root / "s0.png")
    assert out.shape == src.shape and not np.array_equal(out, src)
    assert np.array_equal(out[40:], src[40:])  # far outside the mask: untouched
    meta = read_png_meta(root / "out" / "edits" / "a.png")
    assert meta["id"] == "a" and meta["seed"] == 1 and len(meta["input_hash"]) == 64


@pytest.mark.slow
def test_rerun_skips_current_outputs_and_redoes_changed_ones(job, tiny_dir):
    items, root = job
    items = items[:3]
    models = ModelsConfig(sd=str(tiny_dir / "sd"))
    run_edit_shard(items, out_root=root / "out", cfg=CFG, models=models)
    mtimes = {p.name: p.stat().st_mtime_ns for p in (root / "out" / "edits").iterdir()}
    calls = []

    def loader(concept_dir):
        calls.append(concept_dir)
        raise AssertionError("nothing to edit: the model must not be loaded")

    rep = run_edit_shard(items, out_root=root / "out", cfg=CFG, models=models, loader=loader)
    assert rep.counts() == {"edited": 0, "skipped": 3, "failed": 0} and calls == []
    # a changed input file, a changed config: the affected items are redone
    Image.fromarray(np.zeros((48, 40, 3), np.uint8)).save(root / "s1.png")
    rep = run_edit_shard(items, out_root=root / "out", cfg=CFG, models=models)
    assert {r["id"]: r["status"] for r in rep.results} == {"a": "skipped", "b": "edited", "c": "skipped"}
    assert (root / "out" / "edits" / "a.png").stat().st_mtime_ns == mtimes["a.png"]
    rep = run_edit_shard(items, out_root=root / "out", cfg=CFG.model_copy(update={"guidance": 2.0}), models=models)
    assert rep.counts()["edited"] == 3


def test_item_hash_depends_on_prompt_seed_and_config(job):
    items, _ = job
    a = items[0]
    h = item_hash(a, "cfg", None)
    assert h == item_hash(a, "cfg", None)
    assert len({h, item_hash(a.model_copy(update={"seed": 2}), "cfg", None),
                item_hash(a.model_copy(update={"prompt": "b"}), "cfg", None), item_hash(a, "cfg2", None)}) == 4


def test_noop_engine_copies_inputs_without_a_model(job):
    items, root = job
    rep = run_edit_shard(items[:2], out_root=root / "out", cfg=CFG, models=ModelsConfig(sd="/no/such/model"),
                         engine="noop")
    assert rep.counts() == {"edited": 2, "skipped": 0, "failed": 0}
    assert np.array_equal(load_image(root / "out" / "edits" / "a.png"), load_image(root / "s0.png"))


def test_a_concept_that_cannot_be_loaded_fails_its_items_only(job, tiny_dir):
    items, root = job
    (root / "concepts" / "dog").mkdir(parents=True)
    (root / "concepts" / "dog" / "concept.safetensors").write_bytes(b"x")  # a concept folder, corrupt weights
    models = ModelsConfig(sd=str(tiny_dir / "sd"))
    rep = run_edit_shard([items[0], items[6]], out_root=root / "out", cfg=CFG, models=models,
                         concepts_root=root / "concepts")
    assert [r["id"] for r in rep.results] == ["a"]
    (f,) = rep.failures
    assert f["id"] == "concept" and f["stage"] == "concept" and "concept.safetensors" in f["message"]


def test_skip_decisions_come_from_the_ledger_and_one_listing(job, monkeypatch):
    """With the shard's results table present, outputs unchanged since it was written are not
    opened; one replaced by garbage (its size and mtime changed) is opened, found foreign and
    redone; an output that is gone is redone; without a table (a shard killed before writing it),
    outputs are checked by their own metadata."""
    import lcd.jobs.currency as currency
    from lcd.jobs import tables

    items, root = job
    items = items[:3]
    out, shard = root / "out", "00000-of-00001"
    models = ModelsConfig(sd="/unused/in/noop")
    rep = run_edit_shard(items, out_root=out, cfg=CFG, models=models, engine="noop", shard=shard)
    tables.write_table(tables.shard_table_path(out, "results", shard), rep.results, tables.RESULTS_SCHEMA)
    opened = []
    real = currency.is_current
    monkeypatch.setattr(currency, "is_current", lambda p, h, *a: opened.append(p.name) or real(p, h, *a))
    (out / "edits" / "a.png").write_bytes(b"garbage: its stat changed, so it is opened and redone")
    (out / "edits" / "b.png").unlink()
    rep = run_edit_shard(items, out_root=out, cfg=CFG, models=models, engine="noop", shard=shard)
    assert {r["id"]: r["status"] for r in rep.results} == {"a": "edited", "b": "edited", "c": "skipped"}
    assert opened == ["a.png"]
    opened.clear()
    # a run that edits removes the ledger before its first write (a kill then leaves none, not a
    # wrong one); with no ledger every listed output is read (the unreadable one is redone)
    assert not tables.shard_table_path(out, "results", shard).exists()
    rep = run_edit_shard(items, out_root=out, cfg=CFG, models=models, engine="noop", shard=shard)
    assert sorted(opened) == ["a.png", "b.png", "c.png"]
    assert {r["id"]: r["status"] for r in rep.results} == {"a": "skipped", "b": "skipped", "c": "skipped"}


def test_temp_files_of_a_killed_run_are_removed_by_the_next_run_of_that_shard(job, monkeypatch):
    """A run that edits leaves its running marker until its tables are written; a SIGKILL between
    the temp file's creation and its rename leaves `.<id>.png.<random>.tmp` too. The shard's next
    run finds the marker, removes its own temps and leaves another shard's (it may be writing
    right now); its tables remove the marker."""
    import lcd.jobs.editing as editing
    from lcd.jobs import tables

    items, d = job
    out, shard = d / "out", "00000-of-00001"
    two = [it for it in items if it.id in ("a", "b")]

    def interrupted(*a, **k):  # stops the shard in its first batch, as a kill would
        raise KeyboardInterrupt
    monkeypatch.setattr(editing, "_edit_ready", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_edit_shard(two, out_root=out, cfg=CFG, models=ModelsConfig(), engine="noop", shard=shard)
    monkeypatch.undo()
    marker = tables.running_marker_path(out, shard)
    assert marker.exists()
    for folder in ("edits", "regions"):  # what a SIGKILL mid-write adds
        (out / folder).mkdir(parents=True, exist_ok=True)
        (out / folder / ".a.png.k3j2.tmp").write_bytes(b"partial")
        (out / folder / ".zz.png.q9.tmp").write_bytes(b"other shard")
    rep = run_edit_shard(two, out_root=out, cfg=CFG, models=ModelsConfig(), engine="noop", shard=shard)
    assert rep.counts()["edited"] == 2
    for folder in ("edits", "regions"):
        left = sorted(p.name for p in (out / folder).iterdir() if p.name.endswith(".tmp"))
        assert left == [".zz.png.q9.tmp"], (folder, left)
    assert marker.exists()  # until the tables are written
    tables.write_shard_tables(out, shard, rep.results, rep.failures, rep.hashes)
    assert not marker.exists()


def test_a_shard_looks_up_its_own_outputs_and_never_lists_the_output_folder(job, monkeypatch):
    """edits/ holds a whole job's outputs; a shard's cost must not grow with them, so after a
    finished run it stats its own items' outputs instead of listing the folder: nothing is listed,
    its present outputs are skipped and one that is gone is redone."""
    from lcd.io import storage
    from lcd.jobs import tables

    items, root = job
    items = items[:3]
    out, shard = root / "out", "00001-of-00004"
    rep = run_edit_shard(items, out_root=out, cfg=CFG, models=ModelsConfig(), engine="noop", shard=shard)
    tables.write_shard_tables(out, shard, rep.results, rep.failures, rep.hashes)
    for k in range(300):  # other shards' outputs
        (out / "edits" / f"other{k}.png").write_bytes(b"x")
    (out / "edits" / "b.png").unlink()
    listed = []
    real = storage.list_names
    monkeypatch.setattr(storage, "list_names", lambda folder: listed.append(folder) or real(folder))
    rep = run_edit_shard(items, out_root=out, cfg=CFG, models=ModelsConfig(), engine="noop", shard=shard)
    assert {r["id"]: r["status"] for r in rep.results} == {"a": "skipped", "b": "edited", "c": "skipped"}
    assert listed == []


def test_seed_outside_int64_is_that_items_failure_and_the_rest_is_edited(tmp_path):
    """A seed of 2**70 used to be edited and then overflow the int64 table write, sinking the shard."""
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "s.png")
    lines = [{"id": "ok", "image": "s.png", "select": "box:0,0,8,8", "prompt": "a dog", "seed": 2**63 - 1},
             {"id": "big", "image": "s.png", "select": "box:0,0,8,8", "prompt": "a dog", "seed": 2**70},
             {"id": "u64", "image": "s.png", "select": "box:0,0,8,8", "prompt": "a dog", "seed": 2**64 - 1}]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    items, failures = read_manifest(tmp_path / "m.jsonl")
    assert [it.id for it in items] == ["ok"]
    assert len(failures) == 2 and all("seed" in f.message for f in failures), failures
    from lcd.jobs import tables

    rep = run_edit_shard(items, out_root=tmp_path / "out", cfg=CFG, models=ModelsConfig(), engine="noop")
    tables.write_table(tmp_path / "r.parquet", rep.results, tables.RESULTS_SCHEMA)
    assert tables.read_table(tmp_path / "r.parquet", tables.RESULTS_SCHEMA).column("seed").to_pylist() == [2**63 - 1]


def test_broken_concepts_fail_their_items_and_the_rest_is_edited(tmp_path, tiny_dir):
    """A concept with NaN weights (it would paint the region black and be recorded "edited") and
    one whose card.json is not JSON are refused at load, naming the file; other items go on."""
    import torch

    from lcd.concepts.io import Concept, save_concept

    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "s.png")
    nan = Concept(["[P]"], torch.full((1, 32), float("nan")), "kv", {})
    save_concept(nan, tmp_path / "concepts" / "nan")
    save_concept(Concept(["[P]"], torch.zeros(1, 32), "kv", {}), tmp_path / "concepts" / "card")
    (tmp_path / "concepts" / "card" / "card.json").write_text("{not json")
    lines = [{"id": "plain", "image": "s.png", "select": "box:0,0,16,16", "prompt": "a dog"},
             {"id": "n", "image": "s.png", "select": "box:0,0,16,16", "prompt": "a [P] dog", "concept": "nan"},
             {"id": "c", "image": "s.png", "select": "box:0,0,16,16", "prompt": "a [P] dog", "concept": "card"}]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    items = read_manifest(tmp_path / "m.jsonl")[0]
    rep = run_edit_shard(items, out_root=tmp_path / "out", cfg=CFG, models=ModelsConfig(sd=str(tiny_dir / "sd")),
                         concepts_root=tmp_path / "concepts")
    assert [r["id"] for r in rep.results if r["status"] == "edited"] == ["plain"]
    fails = {f["id"]: f for f in rep.failures}
    assert set(fails) == {"n", "c"} and {f["stage"] for f in fails.values()} == {"concept"}
    assert "non-finite values" in fails["n"]["message"] and "text.embeddings" in fails["n"]["message"]
    assert "card.json: card is not readable JSON" in fails["c"]["message"]


def test_fifo_inputs_and_oversized_images_fail_alone_without_hanging_or_decoding(tmp_path):
    """A FIFO as image or mask used to block the shard forever in the hash; a 76 KB 1-bit PNG of
    25000x25000 used to decode to 12 GB. Both fail by name; the good item is edited once."""
    import os

    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "s.png")
    Image.new("1", (25_000, 25_000)).save(tmp_path / "bomb.png")
    os.mkfifo(tmp_path / "fifo.png")
    lines = [{"id": "ok", "image": "s.png", "select": "box:0,0,8,8", "prompt": "a dog"},
             {"id": "fifo", "image": "fifo.png", "select": "box:0,0,8,8", "prompt": "a dog"},
             {"id": "fifomask", "image": "s.png", "mask": "fifo.png", "prompt": "a dog"},
             {"id": "bomb", "image": "bomb.png", "select": "box:0,0,8,8", "prompt": "a dog"}]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    items = read_manifest(tmp_path / "m.jsonl")[0]
    rep = run_edit_shard(items, out_root=tmp_path / "out", cfg=CFG, models=ModelsConfig(), engine="noop")
    assert [r["id"] for r in rep.results] == ["ok"]
    fails = {f["id"]: f["message"] for f in rep.failures}
    assert "not a regular file" in fails["fifo"] and "not a regular file" in fails["fifomask"]
    assert "625 MP, above the limit of 200 MP" in fails["bomb"]


def test_a_batch_size_change_skips_every_item_and_its_pixels_match(job, tiny_dir):
    """edit.batch_size is execution only (README: a result does not depend on its batch): a re-run
    with another batch size skips every item, and a fresh run at that size writes the same pixels."""
    items, root = job
    models = ModelsConfig(sd=str(tiny_dir / "sd"))
    good = items[:3]
    first = run_edit_shard(good, out_root=root / "out", cfg=CFG.model_copy(update={"batch_size": 1}), models=models)
    assert first.counts() == {"edited": 3, "skipped": 0, "failed": 0}
    again = run_edit_shard(good, out_root=root / "out", cfg=CFG.model_copy(update={"batch_size": 3}), models=models)
    assert again.counts() == {"edited": 0, "skipped": 3, "failed": 0}
    fresh = run_edit_shard(good, out_root=root / "out3", cfg=CFG.model_copy(update={"batch_size": 3}), models=models)
    assert fresh.counts()["edited"] == 3
    for it in good:
        one, three = load_image(root / "out" / "edits" / f"{it.id}.png"), load_image(root / "out3" / "edits" / f"{it.id}.png")
        assert np.abs(one.astype(int) - three.astype(int)).max() <= 1, it.id  # README: at most 1/255 apart


def test_webp_outputs_are_lossless_resume_and_a_format_change_redoes_the_items(job):
    """edit.output_format webp: `<id>.webp` outputs, pixels equal to the input (noop engine),
    metadata readable; the same run skips them; going back to png finds no `<id>.png` and redoes
    every item. A killed run's `.webp` temp is cleaned like a `.png` one."""
    from lcd.jobs import tables

    items, d = job
    out = d / "out"
    (out / "edits").mkdir(parents=True)
    (out / "edits" / ".a.webp.k3j2.tmp").write_bytes(b"partial")
    (out / "tables").mkdir()  # with the running marker a killed run leaves (tested above)
    tables.running_marker_path(out, "00000-of-00001").write_bytes(b"")
    cfg = CFG.model_copy(update={"output_format": "webp"})
    good = [it for it in items if it.id in ("a", "b")]
    rep = run_edit_shard(good, out_root=out, cfg=cfg, models=ModelsConfig(), engine="noop")
    assert rep.counts()["edited"] == 2
    assert sorted(p.name for p in (out / "edits").iterdir()) == ["a.webp", "b.webp"]
    assert np.array_equal(load_image(out / "edits" / "a.webp"), load_image(d / "s0.png"))
    assert read_png_meta(out / "edits" / "b.webp")["id"] == "b"
    assert all(r["output"].endswith(".webp") for r in rep.results)
    again = run_edit_shard(good, out_root=out, cfg=cfg, models=ModelsConfig(), engine="noop")
    assert again.counts() == {"edited": 0, "skipped": 2, "failed": 0}
    png = run_edit_shard(good, out_root=out, cfg=CFG, models=ModelsConfig(), engine="noop")
    assert png.counts()["edited"] == 2 and (out / "edits" / "a.png").is_file()


def test_an_unreachable_http_input_is_named_unreachable_not_missing(job):
    """fsspec's HTTP filesystem raises FileNotFoundError for a refused connection; the failure
    says the host could not be reached (a dead host is not a missing file), and the rest is edited."""
    import socket

    from lcd.jobs.manifest import ManifestItem

    items, d = job
    with socket.socket() as s:  # a port nobody listens on: bound, never listening, then closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = ManifestItem(id="dead", image=f"http://127.0.0.1:{port}/photo.png", select="box:0,0,4,4", prompt="x")
    rep = run_edit_shard([dead, *[it for it in items if it.id == "a"]], out_root=d / "out", cfg=CFG,
                         models=ModelsConfig(), engine="noop")
    assert rep.counts()["edited"] == 1
    (fail,) = rep.failures
    assert fail["id"] == "dead" and "cannot reach it" in fail["message"] and "file not found" not in fail["message"]
