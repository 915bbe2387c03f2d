"""Nightly change detection: train new/changed concepts once, skip unchanged ones."""

import json

import pytest

from lcd.errors import LcdError
from lcd.jobs.fingerprint import FINGERPRINT_FILE, concept_fingerprint, plan_concepts, read_fingerprint, train_stale


@pytest.fixture
def concepts(tmp_path):
    for name in ("cat", "dog"):
        d = tmp_path / "photos" / name
        d.mkdir(parents=True)
        for k in range(3):
            (d / f"{k:02d}.jpg").write_bytes(f"{name}{k}".encode())
    (tmp_path / "photos" / "dog" / "notes.txt").write_text("ignored")
    return tmp_path / "photos", tmp_path / "weights"


def _train_into(trained):
    def train(plan):
        trained.append(plan.name)
        plan.weights_dir.mkdir(parents=True, exist_ok=True)
        (plan.weights_dir / "weights.bin").write_bytes(b"w")
    return train


def test_running_twice_trains_once_and_a_change_retrains_only_that_concept(concepts):
    photos, weights = concepts
    trained = []
    cfg = {"steps": 10}
    plans = plan_concepts(photos, weights, cfg, "sd@abc")
    assert [(p.name, p.reason) for p in plans] == [("cat", "new"), ("dog", "new")]
    assert train_stale(plans, _train_into(trained)) == {"cat": "trained", "dog": "trained"}
    assert train_stale(plan_concepts(photos, weights, cfg, "sd@abc"), _train_into(trained)) == {
        "cat": "skipped", "dog": "skipped"}
    assert trained == ["cat", "dog"]
    (photos / "dog" / "03.jpg").write_bytes(b"new photo")
    plans = plan_concepts(photos, weights, cfg, "sd@abc")
    assert [p.reason for p in plans] == ["unchanged", "changed"]
    train_stale(plans, _train_into(trained))
    assert trained == ["cat", "dog", "dog"]
    # a config or base-model change makes every concept stale
    assert all(p.stale for p in plan_concepts(photos, weights, {"steps": 11}, "sd@abc"))
    assert all(p.stale for p in plan_concepts(photos, weights, cfg, "sd@def"))


def test_a_failed_training_records_nothing_and_does_not_block_others(concepts):
    photos, weights = concepts

    def train(plan):
        if plan.name == "cat":
            raise RuntimeError("bad photos")

    out = train_stale(plan_concepts(photos, weights, {}, "m"), train)
    assert out["cat"] == "failed: RuntimeError: bad photos" and out["dog"] == "trained"
    assert read_fingerprint(weights / "cat") is None and read_fingerprint(weights / "dog") is not None
    (weights / "dog" / FINGERPRINT_FILE).write_text("{corrupt")
    assert [p.reason for p in plan_concepts(photos, weights, {}, "m")] == ["new", "new"]


def test_fingerprint_ignores_non_photos_and_errors_name_the_folder(concepts, tmp_path):
    photos, weights = concepts
    fp = concept_fingerprint(photos / "dog", {}, "m")
    (photos / "dog" / "more.txt").write_text("still ignored")
    assert concept_fingerprint(photos / "dog", {}, "m") == fp
    (tmp_path / "empty").mkdir()
    with pytest.raises(LcdError, match="empty: concept folder has no photos"):
        concept_fingerprint(tmp_path / "empty", {}, "m")
    with pytest.raises(LcdError, match="concepts folder not found"):
        plan_concepts(tmp_path / "nope", weights, {}, "m")
    assert json.loads(json.dumps({"x": fp}))["x"] == fp
