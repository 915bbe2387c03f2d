"""The DreamBench protocol in edit mode, end to end on tiny models over two real subjects."""

from __future__ import annotations

import math

import pytest

from lcd.config import EditConfig
from lcd.errors import LcdError
from lcd.evaluate import protocol as P
from lcd.evaluate.config import EvaluateConfig, SceneSpec
from pathlib import Path

SAMPLES = Path(__file__).resolve().parents[3] / "samples"

EDIT = EditConfig(steps=2, size=64, batch_size=8, dilate_px=2, feather_px=2)


def _cfg(dreambench, **kw):
    base = dict(
        dreambench=str(dreambench), subjects=["dog", "backpack"], n_prompts=2, seeds=[0], scene_size=96,
        scenes=[SceneSpec(image=str(SAMPLES / "scenes/cat_00.jpg"), mask=str(SAMPLES / "masks/cat_00.png"))],
    )
    return EvaluateConfig(**(base | kw))


def test_read_dreambench_templates_and_classes(dreambench):
    db = P.read_dreambench(dreambench)
    assert len(db.object_templates) == len(db.live_templates) == 25
    assert db.classes["bear_plushie"] == "stuffed animal" and len(db.classes) == 30
    dog, bp = P.load_subject(db, "dog"), P.load_subject(db, "backpack")
    assert dog.live and not bp.live and len(dog.photos) >= 4
    assert db.templates(dog)[10] == "a {0} {1} wearing a red hat"
    assert db.templates(bp)[10] == "a {0} {1} with a wheat field in the background"
    assert P.prompt_text(db.templates(dog)[1], "dog", "[P]") == "a [P] dog in the snow"
    assert P.prompt_text(db.templates(dog)[1], "dog", None) == "a dog in the snow"
    with pytest.raises(LcdError, match="'unicorn' is not in prompts_and_classes.txt"):
        P.load_subject(db, "unicorn")


def test_read_dreambench_error(tmp_path):
    with pytest.raises(LcdError, match="DreamBench prompts file not found"):
        P.read_dreambench(tmp_path)
    (tmp_path / P.PROMPTS_FILE).write_text("Classes\nsubject_name,class\ndog,dog\n")
    with pytest.raises(LcdError, match="2 x 25 templates"):
        P.read_dreambench(tmp_path)


def _concept_provider(tiny_dir):
    """Stands in for a trained concept until lcd.train lands: a pipeline whose tokenizer knows [P]
    (new embedding row, random) — the real code path of token prompts, not a trained concept."""
    from lcd.models.loader import load_sd_pipeline

    lp = load_sd_pipeline(tiny_dir / "sd")
    lp.pipe.tokenizer.add_tokens(["[P]"])
    lp.pipe.text_encoder.resize_token_embeddings(len(lp.pipe.tokenizer))
    calls = []

    def provide(subject):
        calls.append(subject.name)
        return lp, "[P]"

    return provide, calls


def test_protocol_end_to_end_two_subjects_and_resume(dreambench, tiny_dir, tiny_sd, embedders, lpips_random, tmp_path):
    provide, calls = _concept_provider(tiny_dir)
    methods = [P.Method("class-word", pipeline=tiny_sd), P.Method("concept", concept=provide)]
    cfg = _cfg(dreambench)
    res = P.run_protocol(methods, cfg, EDIT, embedders, lpips_random, tmp_path)
    assert res.failures == []
    assert len(res.rows) == 2 * 2 * 1 * 2 * 1  # methods x subjects x scenes x prompts x seeds
    by = {(r["method"], r["subject"], r["prompt_index"]): r for r in res.rows}
    assert by[("concept", "dog", 1)]["prompt"] == "a [P] dog in the snow"
    assert by[("concept", "dog", 1)]["clip_text"] == "a dog in the snow"
    assert by[("class-word", "backpack", 0)]["prompt"] == "a backpack in the jungle"
    for r in res.rows:
        for m in ("clip_t", "clip_i", "dino_i", "ms_ssim", "bg_ssim", "bg_lpips", "bg_mse"):
            assert math.isfinite(r[m]), (m, r)
        assert -1 <= r["clip_t"] <= 1 and 0 < r["ms_ssim"] <= 1 and r["msssim_scales"] == 4  # 96 px: 4 scales fit
        assert r["bg_ssim"] > 0.5  # only the (slightly dilated) mask changed
    assert {t["method"] for t in res.table} == {"class-word", "concept"} and all(t["n"] == 4 for t in res.table)
    assert len(res.subject_table) == 4 and len(res.sheets) == 4
    edits = sorted((tmp_path / "edits").rglob("*.png"))
    assert len(edits) == 8
    # resume: a second run reuses every saved edit and scores the same
    stamps = [p.stat().st_mtime_ns for p in edits]
    res2 = P.run_protocol(methods, cfg, EDIT, embedders, lpips_random, tmp_path)
    assert [p.stat().st_mtime_ns for p in edits] == stamps
    assert [r["clip_t"] for r in res2.rows] == pytest.approx([r["clip_t"] for r in res.rows])


def test_protocol_records_bad_items_and_refuses_bad_methods(dreambench, tiny_sd, embedders, tmp_path):
    def broken(subject):
        raise LcdError(f"no concept trained for {subject.name}", item=subject.name)

    cfg = _cfg(dreambench, subjects=["dog"], n_prompts=1)
    res = P.run_protocol([P.Method("untrained", concept=broken)], cfg, EDIT, embedders, None, tmp_path)
    assert res.rows == [] and res.failures[0]["error"] == "no concept trained for dog"
    with pytest.raises(LcdError, match="unique names"):
        P.run_protocol([P.Method("a", tiny_sd), P.Method("a", tiny_sd)], cfg, EDIT, embedders, None, tmp_path)
    with pytest.raises(LcdError, match="is not in prompts_and_classes"):
        P.run_protocol([P.Method("a", tiny_sd)], _cfg(dreambench, subjects=["nope"]), EDIT, embedders, None, tmp_path)


def test_folder_concepts_installs_each_folder_once(tmp_path):
    (tmp_path / "dog").mkdir()
    installed = []

    def install(folder):
        installed.append(folder.name)
        return "pipeline", "[P]"

    provide = P.folder_concepts({"dog": tmp_path / "dog", "cat": tmp_path / "nope"}, install)
    dog = P.Subject("dog", "dog", ())
    assert provide(dog) == ("pipeline", "[P]") and provide(dog) == ("pipeline", "[P]") and installed == ["dog"]
    with pytest.raises(LcdError, match="concept folder not found"):
        provide(P.Subject("cat", "cat", ()))
    with pytest.raises(LcdError, match="no trained concept folder for subject 'teapot'"):
        provide(P.Subject("teapot", "teapot", ()))


def test_protocol_with_a_trained_concept_folder(dreambench, tiny_dir, tiny_sd, embedders, lpips_random, trained_dog,
                                                tmp_path):
    """A concept trained by lcd.train and saved by lcd.concepts: the edit prompt uses its token,
    CLIP-T the class word, and the concept's trained K/V change the edit against the base model."""
    from lcd.models.config import ModelsConfig
    from lcd.models.pipeline import load_sd

    folders = P.concept_folders([str(trained_dog)])
    assert folders == {"dog": trained_dog}
    install = P.concept_installer(lambda concepts: load_sd(ModelsConfig(sd=str(tiny_dir / "sd")), concepts=concepts))
    methods = [P.Method("class-word", pipeline=tiny_sd),
               P.Method("concept", concept=P.folder_concepts(folders, install)),
               P.Method("concept-no-token", concept=P.folder_concepts(folders, install), use_token=False)]
    res = P.run_protocol(methods, _cfg(dreambench, subjects=["dog"], n_prompts=1), EDIT, embedders, lpips_random,
                         tmp_path)
    assert res.failures == []
    by = {r["method"]: r for r in res.rows}
    assert by["concept"]["prompt"] == "a [P] dog in the jungle" and by["concept"]["clip_text"] == "a dog in the jungle"
    assert by["concept-no-token"]["prompt"] == "a dog in the jungle"
    # the trained K/V changed the result, not only the prompt
    assert by["concept-no-token"]["bg_lpips"] != pytest.approx(by["class-word"]["bg_lpips"], abs=0) or \
        by["concept-no-token"]["clip_i"] != pytest.approx(by["class-word"]["clip_i"], abs=0)


def test_concept_folders_specs(tmp_path):
    assert P.concept_folders(["cat=/x/y", "/a/dog"]) == {"cat": Path("/x/y"), "dog": Path("/a/dog")}
    with pytest.raises(LcdError, match="two folders for subject 'dog'"):
        P.concept_folders(["/a/dog", "dog=/b"])
    with pytest.raises(LcdError, match="expected DIR or SUBJECT=DIR"):
        P.concept_folders(["=/b"])
