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


def test_training_into_a_bucket_publishes_checkpoints_then_the_concept_and_another_machine_resumes(s3, tiny_dir,
                                                                                                   tmp_path, monkeypatch):
    """Photos and weights folder both URLs: checkpoints go up as they are written (state.json
    last), the pruned one is deleted, concept.safetensors is the last object put; a machine with
    an empty cache finds the newest checkpoint to resume from, and the concept loads from the URL."""
    from lcd.concepts.io import load_concept
    from lcd.jobs import training
    from lcd.train.config import TrainConfig

    samples = sorted((training.Path(__file__).resolve().parents[3] / "samples" / "concepts" / "dog").glob("*.jpg"))
    for f in samples:
        Image.open(f).convert("RGB").resize((64, 64)).save(tmp_path / f.name)
        s3.put_file(str(tmp_path / f.name), f"lcd-test/data/concepts/dog/{f.name}")
    cfg = TrainConfig(resolution=64, batch_size=2, steps=3, min_photo_px=32, lr=1e-3, prior=False, checkpoint_every=1,
                      keep_checkpoints=1, progress=False)
    log = request_log(ROOT)
    log.clear()
    puts: list[str] = []
    fs, _ = training.storage.filesystem(ROOT)
    fs.s3.meta.events.register("provide-client-params.s3.PutObject", lambda params, **kw: puts.append(params["Key"]))
    url = f"{ROOT}/trained"
    assert training.train_concept("s3://lcd-test/data/concepts/dog", url, cfg, ModelsConfig(sd=str(tiny_dir / "sd"))) == url
    keys = {k.split("concepts/trained/", 1)[1] for k in s3.find("lcd-test/concepts/trained")}
    assert {"concept.safetensors", "card.json", "README.md", "training/losses.csv",
            "training/checkpoints/step-000002/state.json"} <= keys
    assert not [k for k in keys if "step-000001" in k]  # pruned here, so deleted there
    mine = [k.split("concepts/trained/", 1)[1] for k in puts if "concepts/trained/" in k]
    assert mine[-1] == "concept.safetensors"
    assert mine.index("training/checkpoints/step-000001/state.json") > mine.index(
        "training/checkpoints/step-000001/trainable.safetensors")
    concept = load_concept(url)
    assert concept.tokens == ["[P]"] and concept.card["class_words"] == ["dog"] and concept.name == url
    monkeypatch.setenv("LCD_CACHE", str(tmp_path / "other-machine"))
    got = training.pull_checkpoint(url, tmp_path / "other" / "checkpoints")
    assert got is not None and got.name == "step-000002" and (got / "state.json").is_file()
    assert training.pull_checkpoint(url, tmp_path / "other" / "checkpoints") is None  # nothing newer
