"""Exported trigger words cannot collide with ordinary prompts.

A1111 (modules/textual_inversion/textual_inversion.py, `EmbeddingDatabase.register_embedding`)
tokenizes an embedding's name (its file stem) with the model's CLIP tokenizer, lower-cased, and
`find_embedding_at_position` fires it wherever a prompt's tokens contain that id sequence. The
old export named `[P]`'s file `P.safetensors`: every standalone "p" fired it, and `[DOG]` would
have replaced every "dog". Checked with the CLIP BPE tokenizer built offline
(lcd.models.tokenizer) against every ordinary prompt of DreamBench's list (its 25 + 25 templates
with each class word and no concept token) and against the prompts the repo ships.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lcd.concepts.io import Concept
from lcd.concepts.tokens import TRIGGER_WORD, check_trigger, trigger_word, trigger_words
from lcd.errors import PromptError

SAMPLES = Path(__file__).resolve().parents[3] / "samples"
NAMES = ["dog", "cat", "P", "concepts/my_dog", "AB-small", "dog+mug", "123", "a", "the", "photo", "teapot", "x/y/z/",
         "Ünïcode-hund", "cobblestone", "monocle", "sks", "lcd", "qzx"]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    from transformers import CLIPTokenizer

    from lcd.models.tokenizer import write_clip_tokenizer

    return CLIPTokenizer.from_pretrained(str(write_clip_tokenizer(tmp_path_factory.mktemp("clip-tok"))))


def _ids(tok, text: str) -> list[int]:
    return tok(text.lower(), add_special_tokens=False).input_ids  # A1111 lower-cases prompts and names


def _fires(prompt_ids: list[int], name_ids: list[int]) -> bool:
    """A1111's match: the name's token ids appear contiguously in the prompt's."""
    n = len(name_ids)
    return any(prompt_ids[i:i + n] == name_ids for i in range(len(prompt_ids) - n + 1))


def _all_triggers(subjects=()) -> list[str]:
    g = torch.Generator().manual_seed(0)
    words = []
    for name in list(NAMES) + list(subjects):
        for tokens in (["[P]"], ["[DOG]"], ["[DOG]", "[MUG]"], ["[V]", "[W]", "[X]"]):
            salts = [torch.randn(768, generator=g).numpy().tobytes() for _ in tokens]
            words += list(trigger_words(name, tokens, salts).values())
    return words


def _ordinary_prompts(dreambench) -> list[str]:
    from lcd.evaluate.protocol import prompt_text, read_dreambench

    db = read_dreambench(dreambench)
    classes = sorted(set(db.classes.values()))
    return [prompt_text(t, c, None) for t in db.object_templates + db.live_templates for c in classes]


def test_triggers_share_no_token_with_any_dreambench_prompt(clip, dreambench):
    from lcd.evaluate.protocol import read_dreambench

    prompts = _ordinary_prompts(dreambench)
    assert len(prompts) == 50 * len(set(read_dreambench(dreambench).classes.values()))
    prompt_ids = [_ids(clip, p) for p in prompts]
    vocab = {i for ids in prompt_ids for i in ids}
    subjects = sorted(read_dreambench(dreambench).classes)  # concept folders named like DreamBench's
    words = _all_triggers(subjects)
    assert len(set(words)) == len(words)  # distinct across names, tokens and embeddings
    for w in words:
        ids = _ids(clip, w)
        assert len(ids) >= 3 and not set(ids) & vocab, (w, clip.convert_ids_to_tokens(ids))
        assert not any(_fires(p, ids) for p in prompt_ids)
        assert check_trigger(w, clip) == clip.convert_ids_to_tokens(ids)
    # the old names did collide: 'DOG' fires on DreamBench's own dog prompts
    assert any(_fires(p, _ids(clip, "DOG")) for p in prompt_ids)


def test_triggers_never_fire_on_the_shipped_prompts(clip):
    """The same without ../shared: the prompts the repo ships (concept tokens removed)."""
    rows = [json.loads(ln) for ln in (SAMPLES / "manifests" / "edits.jsonl").read_text().splitlines() if ln.strip()]
    prompts = [r["prompt"].replace("[P]", "").strip() for r in rows]
    prompts += ["a p dog on a p street", "dog", "a photo of lcd dog", "4k photo, highly detailed, sharp focus"]
    prompt_ids = [_ids(clip, p) for p in prompts]
    vocab = {i for ids in prompt_ids for i in ids}
    for w in _all_triggers():
        ids = _ids(clip, w)
        assert not set(ids) & vocab and not any(_fires(p, ids) for p in prompt_ids), w
    assert _fires(_ids(clip, "a p dog on a p street"), _ids(clip, "P"))  # what '[P]' -> 'P' did


def test_trigger_is_stable_per_concept_and_distinct_between_them():
    a = trigger_word("concepts/dog", "[P]", b"one")
    assert a == trigger_word("concepts/dog", "[P]", b"one") == trigger_word("other/dog/", "[P]", b"one")
    assert a != trigger_word("concepts/dog", "[P]", b"two") and a != trigger_word("concepts/dog", "[Q]", b"one")
    assert a.startswith("lcddg") and TRIGGER_WORD.fullmatch(a)
    two = trigger_words("dog+mug", ["[DOG]", "[MUG]"], [b"s", b"s"])
    assert two["[DOG]"].startswith("lcddgmgdg") and two["[MUG]"].startswith("lcddgmgmg")
    assert trigger_word("123", "[DOG]").startswith("lcddg") and trigger_word("__", "[1]").startswith("lcdcncpt")


def test_export_prints_and_records_the_trigger(concept_set, fresh_sd, tmp_path, clip):
    from lcd.concepts.export import MANIFEST_NAME, concept_triggers, export_concept

    c = concept_set["A"]
    res = export_concept(c, fresh_sd().pipe.unet, tmp_path, "kohya", tokenizer=clip)
    word = res["trigger_words"]["[P]"]
    assert word == concept_triggers(c)["[P]"] and word != "P" and TRIGGER_WORD.fullmatch(word)
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert manifest["trigger_words"] == {"[P]": word}
    assert (tmp_path / "embeddings" / f"{word}.safetensors").is_file() and not (tmp_path / "embeddings" / "P.safetensors").exists()
    assert manifest["prompt"]["a1111"] == f"<lora:A:1> {word} dog"


@pytest.mark.parametrize("word", ["P", "dog", "lcd_dog_ab12", "lcddog", "lcddogjjjjj"])
def test_check_trigger_refuses_words_that_collide(clip, word):
    with pytest.raises(PromptError, match=rf"export: trigger word '{word}' could collide with ordinary words"):
        check_trigger(word, clip)


def test_concept_triggers_use_the_embedding_bytes():
    from lcd.concepts.export import concept_triggers

    e = torch.zeros(1, 768)
    a = Concept(["[P]"], e, "kv", {}, 1.0, {}, "x/dog")
    b = Concept(["[P]"], e + 1, "kv", {}, 1.0, {}, "x/dog")
    assert concept_triggers(a) != concept_triggers(b) and concept_triggers(a) == concept_triggers(a)
