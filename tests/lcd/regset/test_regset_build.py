"""End to end: metadata shards -> tiny open_clip filter -> img2dataset from 127.0.0.1 -> manifest,
shortfall generated with the tiny SD; a rerun embeds, downloads and generates nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lcd.errors import LcdError
from lcd.models.loader import load_open_clip, load_sd_pipeline
from lcd.regset.build import build_regset
from lcd.regset.config import RegsetConfig
from lcd.regset.embed import EmbeddingCache, embed_texts
from lcd.regset.manifest import read_manifest

DOG_CAPTIONS = ["a photo of a dog", "a dog in the grass", "my dog", "dog portrait", "a small dog", "a happy dog"]


def _independent_sims(folder, texts, prompt):
    """Cosines computed here with open_clip directly, not through lcd.regset."""
    import open_clip

    lo = load_open_clip(folder)
    model = open_clip.create_model(lo.arch, pretrained=str(next(folder.glob("*.safetensors"))))
    tok = open_clip.get_tokenizer(lo.arch)
    with torch.no_grad():
        t = model.encode_text(tok(texts)).numpy()
        q = model.encode_text(tok([prompt])).numpy()[0]
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    return t @ (q / np.linalg.norm(q))


def test_embed_cache_counts_hits(tmp_path, tiny_open_clip):
    clip = load_open_clip(tiny_open_clip)
    cache = EmbeddingCache(tmp_path)
    a = cache.get_or_embed("abc", ["a dog", "a cat"], clip, "caption")
    b = cache.get_or_embed("abc", ["a dog", "a cat"], clip, "caption")
    assert (cache.hits, cache.misses, cache.embedded) == (1, 1, 2)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (2, 32) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(a, embed_texts(clip, ["a dog", "a cat"], batch_size=1), atol=1e-5)


@pytest.mark.server
@pytest.mark.slow
def test_build_end_to_end_with_shortfall_and_rerun(tmp_path, photo_server, silent_url, tiny_open_clip,
                                                   tiny_dir, write_shard):
    base, names = photo_server
    dogs = [n for n in names if n.startswith("dog_")][:5]
    urls = [f"{base}/{n}" for n in dogs] + [f"{base}/gone.jpg", f"{base}/notes.txt", silent_url, f"{base}/{dogs[0]}"]
    caps = DOG_CAPTIONS[:5] + [DOG_CAPTIONS[5], "a dog sleeping", "a dog running", "a dog, again"]
    # two shards; one extra candidate is a caption duplicate ("A photo of a DOG")
    write_shard(tmp_path / "meta" / "part-0.parquet", urls[:5], caps[:5])
    write_shard(tmp_path / "meta" / "part-1.parquet", urls[5:] + [f"{base}/{names[-1]}"],
                caps[5:] + ["A photo of a  DOG"])
    all_caps = caps + ["A photo of a  DOG"]
    all_urls = urls + [f"{base}/{names[-1]}"]
    sims = _independent_sims(tiny_open_clip, all_caps, "dog")
    # threshold between the 2nd-lowest and 3rd-lowest similarity: the two lowest are filtered out
    srt = np.sort(sims)
    threshold = float((srt[1] + srt[2]) / 2)
    cfg = RegsetConfig(
        class_prompt="dog", shards=[str(tmp_path / "meta")], clip_model=str(tiny_open_clip),
        threshold=threshold, top_n=7, image_size=64, min_image_size=32, timeout_s=2, threads=4,
        gen_size=64, gen_steps=2, gen_batch_size=2,
    )
    loads = []

    def load_pipeline():
        loads.append(1)
        return load_sd_pipeline(tiny_dir / "sd")

    out = tmp_path / "regset"
    rep = build_regset(cfg, out, tmp_path / "cache", sd_ref=str(tiny_dir / "sd"), load_pipeline=load_pipeline)

    # expected selection, computed independently: > threshold, best first, dedupe, top 7
    order = [i for i in np.argsort(-sims, kind="stable") if sims[i] > threshold]
    want, seen_u, seen_c = [], set(), set()
    for i in order:
        key = " ".join(all_caps[i].split()).casefold()
        if all_urls[i] in seen_u or key in seen_c:
            continue
        seen_u.add(all_urls[i]), seen_c.add(key), want.append(i)
    want = want[:7]
    assert rep.candidates == 10 and rep.above_threshold == 8
    assert rep.selected == len(want)
    ok = [i for i in want if all_urls[i] in {f"{base}/{n}" for n in dogs + [names[-1]]}]
    assert rep.downloaded == len(ok) and rep.failed == len(want) - len(ok)
    assert {f["url"] for f in rep.failures} == {all_urls[i] for i in want} - {all_urls[i] for i in ok}
    assert rep.embedded == 11 and rep.embed_cache_misses == 3  # 2 shards + the prompt
    assert rep.shortfall == 7 - len(ok) > 0
    assert rep.generated == rep.shortfall and loads == [1]

    rows = read_manifest(out)
    assert len(rows) == 7
    real = [r for r in rows if r["source"] == "metadata"]
    assert [r["url"] for r in real] == [all_urls[i] for i in ok]
    np.testing.assert_allclose([r["similarity"] for r in real], sims[ok], atol=1e-5)
    gen = [r for r in rows if r["source"] == "generated"]
    assert len(gen) == rep.shortfall and all(r["similarity"] is None and r["url"] is None for r in gen)
    lines = (out / "images.txt").read_text().splitlines()
    assert len(lines) == 7 == len((out / "caption.txt").read_text().splitlines())
    for line, r in zip(lines, rows):
        im = Image.open(line)
        assert im.mode == "RGB" and im.size == ((64, 64))
    # caption.txt: one caption a line, whitespace collapsed; the manifest keeps the caption as is
    assert (out / "caption.txt").read_text().splitlines()[:len(ok)] == [" ".join(all_caps[i].split()) for i in ok]
    assert [r["caption"] for r in real] == [all_caps[i] for i in ok]

    # 2nd run, same inputs: no embedding, no download, no generation, same manifest
    rep2 = build_regset(cfg, out, tmp_path / "cache", sd_ref=str(tiny_dir / "sd"), load_pipeline=load_pipeline)
    assert (rep2.embedded, rep2.embed_cache_misses, rep2.embed_cache_hits) == (0, 0, 3)
    assert (rep2.downloads_attempted, rep2.download_cache_hits) == (0, rep.selected)
    assert (rep2.generated, rep2.generated_cached) == (0, rep.shortfall) and loads == [1]
    assert read_manifest(out) == rows


def test_shortfall_generates_exactly_the_missing_count(tmp_path, tiny_open_clip, tiny_dir, write_shard):
    # every candidate is below an impossible threshold: the whole set is generated
    write_shard(tmp_path / "m.parquet", ["http://127.0.0.1:9/x.jpg"], ["a cat"])
    cfg = RegsetConfig(shards=[str(tmp_path / "m.parquet")], clip_model=str(tiny_open_clip), threshold=0.9999,
                       top_n=3, gen_size=64, gen_steps=2, gen_batch_size=2)
    rep = build_regset(cfg, tmp_path / "out", tmp_path / "cache", sd_ref=str(tiny_dir / "sd"),
                       load_pipeline=lambda: load_sd_pipeline(tiny_dir / "sd"))
    assert rep.selected == 0 and rep.downloads_attempted == 0
    assert rep.shortfall == 3 and rep.generated == 3
    assert [r["source"] for r in read_manifest(tmp_path / "out")] == ["generated"] * 3
    # a bigger set later reuses the 3 and makes exactly 2 more
    rep2 = build_regset(cfg.model_copy(update={"top_n": 5}), tmp_path / "out", tmp_path / "cache",
                        sd_ref=str(tiny_dir / "sd"), load_pipeline=lambda: load_sd_pipeline(tiny_dir / "sd"))
    assert (rep2.generated, rep2.generated_cached) == (2, 3)
    assert len(list((tmp_path / "out" / "images").iterdir())) == 5


def test_shortfall_without_base_model_is_an_error(tmp_path, tiny_open_clip):
    cfg = RegsetConfig(shards=[str(tmp_path)], clip_model=str(tiny_open_clip))
    with pytest.raises(LcdError, match="generate_shortfall needs the base model"):
        build_regset(cfg, tmp_path / "out", tmp_path / "cache")


def test_image_text_recheck_drops_and_records(tmp_path, tiny_open_clip):
    from lcd.regset.build import RegsetReport, recheck_image_text
    from lcd.regset.manifest import RegsetEntry

    samples = Path(__file__).resolve().parents[3] / "samples" / "concepts" / "dog"
    entries = [RegsetEntry(file=p, caption="a dog", similarity=0.9, sha256="x", source="metadata", url=f"u{i}")
               for i, p in enumerate(sorted(samples.glob("*.jpg"))[:3])]
    clip = load_open_clip(tiny_open_clip)
    report = RegsetReport()
    assert recheck_image_text(entries, clip, -1.0, report) == entries and report.rejected_image_text == 0
    assert recheck_image_text(entries, clip, 1.01, report) == []
    assert report.rejected_image_text == 3
    assert [f["url"] for f in report.failures] == ["u0", "u1", "u2"]
    assert all("image-text similarity" in f["error"] for f in report.failures)
