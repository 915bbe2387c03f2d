"""Paths that are not what a manifest field needs (a device folder as concept, a directory as
mask, an unreadable file) fail their own item by name; the good items are edited once."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from lcd.config import EditConfig, ModelsConfig
from lcd.jobs.editing import run_edit_shard
from lcd.jobs.manifest import read_manifest

CFG = EditConfig(steps=2, size=64, batch_size=2)


def _run(tmp_path, lines):
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    items = read_manifest(tmp_path / "m.jsonl")[0]
    return run_edit_shard(items, out_root=tmp_path / "out", cfg=CFG, models=ModelsConfig(), engine="noop",
                          concepts_root=tmp_path / "concepts")


@pytest.fixture
def scene(tmp_path):
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "s.png")
    Image.fromarray(np.full((16, 16), 255, np.uint8)).save(tmp_path / "m.png")
    (tmp_path / "photos").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "photos" / "p.png")
    (tmp_path / "maskdir").mkdir()
    return tmp_path


def _item(i, **kw):
    return {"id": i, "image": "s.png", "prompt": "a dog", **({"select": "box:0,0,8,8"} if "mask" not in kw else {}), **kw}


def test_a_concept_that_is_no_concept_folder_fails_alone(scene):
    lines = [_item("ok1"), _item("cdev", concept="/dev"), _item("ok2", mask="m.png"),
             _item("cnull", concept="/dev/null"), _item("cfile", concept=str(scene / "s.png")),
             _item("cphotos", concept=str(scene / "photos")), _item("cgone", concept="nope")]
    rep = _run(scene, lines)
    assert sorted(r["id"] for r in rep.results) == ["ok1", "ok2"]
    assert {r["status"] for r in rep.results} == {"edited"}
    fails = {f["id"]: f for f in rep.failures}
    assert sorted(fails) == ["cdev", "cfile", "cgone", "cnull", "cphotos"] and len(rep.failures) == 5
    assert "concept '/dev': /dev is not a concept folder (no concept.safetensors" in fails["cdev"]["message"]
    assert fails["cdev"]["item"] == "/dev" and fails["cdev"]["stage"] == "input"
    assert "/dev/null is not a folder" in fails["cnull"]["message"]
    assert "s.png is not a folder" in fails["cfile"]["message"]
    assert "photos is not a concept folder" in fails["cphotos"]["message"]
    assert "weights folder" in fails["cgone"]["message"] and "not found" in fails["cgone"]["message"]
    assert sorted(os.listdir(scene / "out" / "edits")) == ["ok1.png", "ok2.png"]


def test_a_directory_as_mask_says_it_is_a_directory(scene):
    rep = _run(scene, [_item("ok"), _item("dir", mask="maskdir")])
    assert [r["id"] for r in rep.results] == ["ok"]
    (f,) = rep.failures
    assert f["id"] == "dir" and "maskdir: a directory; expected a file" in f["message"], f
    assert "not found" not in f["message"]


def test_an_unreadable_input_or_concept_file_fails_alone(scene, monkeypatch):
    """A PermissionError (or EIO) while hashing used to escape the shard as an OSError."""
    import torch

    from lcd.concepts.io import Concept, save_concept
    from lcd.io import hashing
    from lcd.jobs import hashes

    save_concept(Concept(["[P]"], torch.zeros(1, 32), "kv", {}), scene / "concepts" / "locked")
    real = hashing.sha256_file

    def locked(path, *a, **k):  # root reads mode-0 files, so the denial is simulated
        if str(path).endswith(("m.png", "card.json")):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(hashing, "sha256_file", locked)
    monkeypatch.setattr(hashes, "sha256_file", locked)
    rep = _run(scene, [_item("ok"), _item("mask", mask="m.png"), _item("c", concept="locked")])
    assert [r["id"] for r in rep.results] == ["ok"]
    fails = {f["id"]: f["message"] for f in rep.failures}
    assert fails["mask"].endswith("m.png: cannot read: Permission denied")
    assert "concept 'locked': cannot read" in fails["c"] and "card.json: Permission denied" in fails["c"]
