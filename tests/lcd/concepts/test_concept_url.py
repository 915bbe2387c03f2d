"""Concept folders at a URL (`s3://bucket/concepts/dog`, lcd.concepts.io.fetch_concept): an edit
shard whose concepts_root is on object storage fetches each concept once per machine into the
fetch cache (not its training/ checkpoints), validates it before use, and edits the same pixels
as from the local folder; a changed concept is fetched again and its items redone; a broken one
fails its items in one line naming the URL."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from lcd.concepts.io import Concept, fetch_concept, save_concept
from lcd.config import EditConfig, ModelsConfig
from lcd.errors import ModelLoadError
from lcd.io.images import load_image
from lcd.jobs.editing import run_edit_shard
from lcd.jobs.manifest import read_manifest
from tests.s3server import gets, request_log, s3, s3_endpoint  # noqa: F401 - the fixtures

CFG = EditConfig(steps=2, size=64, batch_size=2, dilate_px=2, feather_px=2)
ROOT = "s3://lcd-test/concepts"


@pytest.fixture
def job(tmp_path, s3):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(tmp_path / "s.png")
    lines = [{"id": f"d{k}", "image": "s.png", "select": "box:4,4,30,30", "prompt": "a [P] dog", "seed": k,
              "concept": "dog"} for k in range(1)]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    local = tmp_path / "concepts"
    save_concept(Concept(["[P]"], torch.randn(1, 32, generator=torch.Generator().manual_seed(0)), "kv", {}),
                 local / "dog")
    (local / "dog" / "training" / "checkpoints").mkdir(parents=True)
    (local / "dog" / "training" / "checkpoints" / "step-10.pt").write_bytes(b"c" * 50_000)
    s3.put(str(local / "dog"), "lcd-test/concepts/dog", recursive=True)
    return read_manifest(tmp_path / "m.jsonl")[0], tmp_path


def _edit(items, root, out, tiny_dir):
    rep = run_edit_shard(items, out_root=out, cfg=CFG, models=ModelsConfig(sd=str(tiny_dir / "sd")), concepts_root=root)
    return rep, {r["id"]: load_image(out / "edits" / f"{r['id']}.png") for r in rep.results}


def test_a_concept_at_a_url_edits_as_the_local_folder_and_is_fetched_once(job, tiny_dir, s3):
    items, tmp = job
    _, local = _edit(items, tmp / "concepts", tmp / "out-local", tiny_dir)
    log = request_log(ROOT)
    rep, remote = _edit(items, ROOT, tmp / "out-url", tiny_dir)
    assert rep.counts() == {"edited": 1, "skipped": 0, "failed": 0}
    for k in local:
        np.testing.assert_array_equal(remote[k], local[k])
    assert sorted(gets(log)) == ["concepts/dog/README.md", "concepts/dog/card.json", "concepts/dog/concept.safetensors"]
    log.clear()
    assert fetch_concept(f"{ROOT}/dog") == fetch_concept(f"{ROOT}/dog/")  # a second shard here: a listing, no GET
    assert gets(log) == [] and [op for op, _ in log] == ["ListObjectsV2", "ListObjectsV2"]


def test_a_changed_concept_is_fetched_again_and_its_items_redone(job, tiny_dir, s3):
    items, tmp = job
    out = tmp / "out"
    _, first = _edit(items, ROOT, out, tiny_dir)
    rep, _ = _edit(items, ROOT, out, tiny_dir)
    assert rep.counts() == {"edited": 0, "skipped": 1, "failed": 0}
    save_concept(Concept(["[P]"], torch.randn(1, 32, generator=torch.Generator().manual_seed(1)), "kv", {}),
                 tmp / "new")
    s3.put_file(str(tmp / "new" / "concept.safetensors"), "lcd-test/concepts/dog/concept.safetensors")
    log = request_log(ROOT)
    rep, second = _edit(items, ROOT, out, tiny_dir)
    assert rep.counts() == {"edited": 1, "skipped": 0, "failed": 0}
    assert gets(log) == ["concepts/dog/concept.safetensors"] and not np.array_equal(first["d0"], second["d0"])


def test_broken_concepts_at_a_url_fail_their_items_naming_the_url(job, tiny_dir, s3):
    items, tmp = job
    s3.pipe({"lcd-test/concepts/photos/a.jpg": b"x", "lcd-test/concepts/bad/concept.safetensors": b"not safetensors"})
    with pytest.raises(ModelLoadError, match=r"^s3://lcd-test/concepts/photos: not a concept folder "
                                             r"\(no concept.safetensors\)$"):
        fetch_concept(f"{ROOT}/photos")
    with pytest.raises(ModelLoadError, match=r"^s3://lcd-test/concepts/bad/concept.safetensors: cannot read concept "
                                             r"weights"):
        fetch_concept(f"{ROOT}/bad")
    broken = [items[0].model_copy(update={"concept": c, "id": f"d{k}"}) for k, c in enumerate(["bad", ".."])]
    rep, _ = _edit(broken, ROOT, tmp / "out", tiny_dir)
    fails = {f["id"]: f["message"] for f in rep.failures}
    assert rep.counts()["failed"] == 2 and "lcd-cache" not in " ".join(fails.values())
    assert fails["d0"].startswith("concept 'bad': s3://lcd-test/concepts/bad/concept.safetensors: cannot read")
    assert "'.', '..' or '\\' in the URL's path" in fails["d1"]
