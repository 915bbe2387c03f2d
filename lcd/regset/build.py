"""Build a regularization set: candidates -> caption filter -> download -> shortfall -> manifest."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from lcd.errors import LcdError
from lcd.io.config import IoConfig
from lcd.models.loader import LoadedOpenClip, load_open_clip
from lcd.io.hashing import sha256_file
from lcd.models.sources import local_source
from lcd.regset.config import RegsetConfig
from lcd.regset.download import DownloadStore
from lcd.regset.embed import EmbeddingCache, embed_images, embed_texts, texts_sha256
from lcd.regset.filter import select_captions
from lcd.regset.generate import GenerationSpec, generate_class_images
from lcd.regset.manifest import RegsetEntry, write_regset
from lcd.regset.sources import Candidates, expand_shards, query_clip_back, read_shard


@dataclass
class RegsetReport:
    """Counts of one build; `embedded`, `downloads_attempted` and `generated` are 0 on a rerun."""

    candidates: int = 0
    above_threshold: int = 0
    duplicates: int = 0
    selected: int = 0
    downloaded: int = 0  # selected URLs whose image passed the checks
    failed: int = 0
    downloads_attempted: int = 0  # URLs handed to img2dataset in this run
    download_cache_hits: int = 0
    embed_cache_hits: int = 0
    embed_cache_misses: int = 0
    embedded: int = 0  # captions run through the text encoder in this run
    rejected_image_text: int = 0
    shortfall: int = 0
    generated: int = 0  # images run through the base model in this run
    generated_cached: int = 0
    failures: list[dict] = field(default_factory=list)  # {"url", "error"} of failed URLs

    def to_dict(self) -> dict:
        return asdict(self)


def metadata_candidates(cfg: RegsetConfig, clip: LoadedOpenClip, cache: EmbeddingCache,
                        io_cfg: IoConfig | None = None) -> Candidates:
    """Read every shard (by URL within `io_cfg`), embed its captions (cache by shard hash), score
    against the prompt."""
    urls, caps, shard_names, embs = [], [], [], []
    for loc in expand_shards(cfg.shards):
        shard = read_shard(loc, cfg.url_col, cfg.caption_col, io_cfg)
        embs.append(cache.get_or_embed(shard.sha256, shard.captions, clip, cfg.caption_col, cfg.embed_batch_size))
        urls += shard.urls
        caps += shard.captions
        shard_names += [loc] * len(shard.urls)
    query = cache.get_or_embed(texts_sha256([cfg.class_prompt]), [cfg.class_prompt], clip, "prompt")[0]
    emb = np.concatenate(embs) if embs else np.zeros((0, query.shape[0]), np.float32)
    return Candidates(urls=urls, captions=caps, shard=shard_names, similarity=emb @ query)


def sd_model_pin(ref: str, variant: str | None = None) -> str:
    """What pins the base model for the generation cache: content hash of the local files read
    (a diffusers folder's: those of models.variant `variant`), or the ref (and variant)."""
    p = Path(ref)
    return local_source(p, variant).sha256 if p.exists() else ref + (f"#{variant}" if variant else "")


def build_regset(
    cfg: RegsetConfig,
    out_dir: str | Path,
    cache_dir: str | Path,
    *,
    sd_ref: str | None = None,
    sd_variant: str | None = None,
    load_pipeline: Callable[[], object] | None = None,
    clip: LoadedOpenClip | None = None,
    io_cfg: IoConfig | None = None,
) -> RegsetReport:
    """Build the set in `out_dir` (layout in lcd/regset/manifest.py); caches live in `cache_dir`
    (embeddings/, downloads/, generated/) and make a rerun with the same inputs do no work.

    `sd_ref` (weights variant `sd_variant`) + `load_pipeline` (-> LoadedPipeline) generate the shortfall; without them a
    shortfall is an error when `cfg.generate_shortfall` is set. `io_cfg` (params.yaml `io`) bounds
    the network reads: shards by URL, and img2dataset's per-read timeout (download_timeout_s).
    """
    # 1. check inputs
    if cfg.generate_shortfall and (sd_ref is None or load_pipeline is None):
        raise LcdError("regset.generate_shortfall needs the base model (sd_ref and load_pipeline)", item="sd")
    cache_dir = Path(cache_dir)
    report = RegsetReport()
    need_clip = cfg.source == "metadata" or cfg.image_text_min is not None
    if clip is None and need_clip:
        clip = load_open_clip(cfg.clip_model)
    # 2. candidates with caption-to-prompt similarities; 3. caption filter: threshold, dedupe, top-N
    cands, source = _candidates(cfg, clip, cache_dir, report, io_cfg)
    sel = select_captions(cands.similarity, cands.urls, cands.captions, threshold=cfg.threshold, top_n=cfg.top_n)
    report.above_threshold, report.duplicates, report.selected = sel.above, sel.duplicates, len(sel.indices)
    # 4. download (cached per URL) + decode check
    entries, fetched_rows = _download(cfg, cands, sel.indices, source, cache_dir, report, io_cfg)
    # 5. optional image-text re-check with the same CLIP
    if cfg.image_text_min is not None and entries:
        entries = recheck_image_text(entries, clip, cfg.image_text_min, report)
    report.downloaded, report.failed = len(entries), len(report.failures)
    # 6. shortfall: generate exactly the missing count
    report.shortfall = cfg.top_n - len(entries)
    if report.shortfall > 0 and cfg.generate_shortfall:
        entries += _generate_shortfall(cfg, sd_model_pin(sd_ref, sd_variant), load_pipeline, cache_dir, report)
    # 7. manifest + diffusers layout
    info = {"config": cfg.model_dump(), "report": report.to_dict(),
            "clip_model": clip.source.to_dict() if clip is not None else None}
    write_regset(out_dir, entries, fetched_rows, info)
    return report


def _candidates(cfg: RegsetConfig, clip, cache_dir: Path, report: RegsetReport, io_cfg: IoConfig | None = None):
    """-> (candidates with caption similarities, source name): LAION-style metadata scored with
    CLIP (embeddings cached), or a clip back's kNN answer."""
    cache = EmbeddingCache(cache_dir / "embeddings")
    if cfg.source == "metadata":
        cands, source = metadata_candidates(cfg, clip, cache, io_cfg), "metadata"
    else:
        cands = query_clip_back(cfg.backend_url, cfg.backend_index, cfg.class_prompt, cfg.backend_num_results, io_cfg)
        source = "clip_back"
    report.candidates = len(cands.urls)
    report.embed_cache_hits, report.embed_cache_misses, report.embedded = cache.hits, cache.misses, cache.embedded
    return cands, source


def download_timeout_s(cfg: RegsetConfig, io_cfg: IoConfig | None) -> float:
    """img2dataset's timeout: the stricter of regset.timeout_s and io.http_first_byte_timeout_s.
    It is urllib's, per socket read, so it bounds the wait for an answer and every pause in a body,
    not the whole transfer (img2dataset has no such setting)."""
    return cfg.timeout_s if io_cfg is None else min(cfg.timeout_s, io_cfg.http_first_byte_timeout_s)


def _download(cfg: RegsetConfig, cands, indices, source: str, cache_dir: Path, report: RegsetReport,
              io_cfg: IoConfig | None = None):
    """Fetch the selected URLs with img2dataset (cached per URL) -> (entries that downloaded and
    decoded, img2dataset's rows). Dead links become report failures naming the URL."""
    store = DownloadStore(cache_dir / "downloads")
    fetched = store.fetch(
        [cands.urls[i] for i in indices], [cands.captions[i] for i in indices], image_size=cfg.image_size,
        timeout_s=download_timeout_s(cfg, io_cfg), retries=cfg.retries, processes=cfg.processes, threads=cfg.threads,
        min_image_size=cfg.min_image_size, retry_failed=cfg.retry_failed,
    )
    report.downloads_attempted, report.download_cache_hits = fetched.attempted, fetched.cached
    entries = []
    for i, row in zip(indices, fetched.rows):
        if row["status"] != "success":
            report.failures.append({"url": row["url"], "error": row["error"]})
            continue
        entries.append(RegsetEntry(
            file=store.image_path(row), caption=cands.captions[i], similarity=float(cands.similarity[i]),
            sha256=row["sha256"], source=source, url=row["url"], shard=cands.shard[i],
        ))
    return entries, fetched.rows


def _generate_shortfall(cfg: RegsetConfig, model_pin: str, load_pipeline, cache_dir: Path, report: RegsetReport):
    """Exactly `report.shortfall` class images from the base model (cached by model pin and settings)."""
    spec = GenerationSpec(model=model_pin, prompt=cfg.class_prompt, size=cfg.gen_size,
                          steps=cfg.gen_steps, guidance=cfg.gen_guidance, seed=cfg.seed)
    gen = generate_class_images(spec, report.shortfall, cache_dir / "generated", load_pipeline, cfg.gen_batch_size)
    report.generated, report.generated_cached = gen.generated, gen.cached
    return [RegsetEntry(file=f, caption=cfg.class_prompt, similarity=None, sha256=sha256_file(f), source="generated")
            for f in gen.files]


def recheck_image_text(entries, clip, minimum, report):
    """Drop downloaded images whose CLIP image embedding is not close enough to their caption."""
    from PIL import Image

    images = [Image.open(e.file).convert("RGB") for e in entries]
    img = embed_images(clip, images)
    txt = embed_texts(clip, [e.caption for e in entries])
    sims = (img * txt).sum(axis=1)
    kept = []
    for e, s in zip(entries, sims):
        if s >= minimum:
            kept.append(e)
        else:
            report.rejected_image_text += 1
            report.failures.append({"url": e.url, "error": f"image-text similarity {s:.3f} < {minimum}"})
    return kept
