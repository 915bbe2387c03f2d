import pytest

pytest.importorskip("lcd.train")

from lcd.errors import LcdError  # noqa: E402
from lcd.jobs.fingerprint import concept_fingerprint  # noqa: E402
from lcd.jobs.training import concept_spec  # noqa: E402


def test_concept_spec_defaults_to_folder_name_and_reads_concept_json(tmp_path):
    d = tmp_path / "dog"
    d.mkdir()
    (d / "00.jpg").write_bytes(b"x")
    spec = concept_spec(d)
    assert spec.class_word == "dog" and spec.token == "[P]" and spec.photos == str(d)
    fp = concept_fingerprint(d, {}, "m")
    (d / "concept.json").write_text('{"class_word": "puppy", "token": "[D]"}')
    spec = concept_spec(d)
    assert (spec.class_word, spec.token) == ("puppy", "[D]")
    assert concept_fingerprint(d, {}, "m") != fp  # the spec is part of what was trained
    (d / "concept.json").write_text("[1]")
    with pytest.raises(LcdError, match="concept.json: must be a JSON object"):
        concept_spec(d)
    (d / "concept.json").write_text("{oops")
    with pytest.raises(LcdError, match="concept.json: not valid JSON"):
        concept_spec(d)
