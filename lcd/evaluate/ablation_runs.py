"""The paper's ablations fed by real runs (Tables 2-4), for `lcd evaluate ablations`.

- Table 2: lcd.train runs the same concept with method 'kv' and 'full' (every UNet weight); the
  table counts the parameters the run actually trained and the wall time each run took.
- Table 3: edits of each scene with no region (whole image), a text-predicted region (lcd.masks
  text selection with CLIP among candidate regions: the SAM region, its complement and the image
  halves) and the SAM region; background LPIPS/PSNR outside the SAM region.
- Table 4: the protocol with the trained concept, with and without its token.
Everything is a function of its inputs (pipelines are loaded by `load_base`), so tests run it on
tiny models and a GPU run uses real ones.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from lcd.edit.config import EditConfig
from lcd.errors import LcdError
from lcd.evaluate.ablations import Scene, region_ablation, sam_region, whole_image
from lcd.evaluate.background import LpipsModel
from lcd.evaluate.config import EvaluateConfig
from lcd.evaluate.embedders import Embedders
from lcd.models.pipeline import LoadedSD
from lcd.evaluate.protocol import folder_concepts, concept_installer, load_scene, read_dreambench, run_protocol
from lcd.evaluate.ablations import token_ablation_methods
from lcd.models.loader import LoadedPipeline


def training_table(load_base: Callable[[], LoadedPipeline], photos: Path, class_word: str, train_cfg,
                   out_dir: Path) -> tuple[list[dict], Path]:
    """Table 2 from two lcd.train runs (method kv, full) -> (rows, the kv concept folder)."""
    from lcd.concepts.io import save_concept
    from lcd.train.config import ConceptSpec
    from lcd.train.loop import train_concepts

    rows, kv_folder = [], None
    for method in ("kv", "full"):
        lp = load_base()
        t0 = time.perf_counter()
        res = train_concepts(lp, [ConceptSpec(photos=str(photos), class_word=class_word)],
                             train_cfg.model_copy(update={"method": method}))
        dt = time.perf_counter() - t0
        unet = lp.pipe.unet
        trained = sum(p.numel() for p in unet.parameters() if p.requires_grad)
        total = sum(p.numel() for p in unet.parameters())
        tok = int(res.concept.embeddings.numel())
        rows.append({"setting": method, "trainable_params": trained + tok, "fraction_of_unet": trained / total,
                     "steps": train_cfg.steps, "time_s": dt, "time_per_step_s": dt / train_cfg.steps})
        if method == "kv":
            kv_folder = save_concept(res.concept, out_dir / "concepts" / photos.name)
    return rows, kv_folder


def text_region(clip) -> Callable[[np.ndarray, np.ndarray, str], np.ndarray]:
    """Region provider: lcd.masks.select text selection among candidates (SAM region, complement,
    left/right/top/bottom halves), scored by CLIP against the prompt."""
    from lcd.masks.select import select_by_text

    def provide(image: np.ndarray, sam_mask: np.ndarray, prompt: str) -> np.ndarray:
        h, w = sam_mask.shape
        halves = np.zeros((4, h, w), bool)
        halves[0, :, : w // 2] = halves[1, :, w // 2:] = halves[2, : h // 2] = halves[3, h // 2:] = True
        cands = np.concatenate([sam_mask[None].astype(bool), ~sam_mask[None].astype(bool), halves])
        cands = cands[cands.reshape(len(cands), -1).any(1)]
        bboxes = [_bbox(m) for m in cands]
        i, _ = select_by_text(image, cands, bboxes, prompt, clip)
        return cands[i]

    return provide


def _bbox(m: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(m)
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


def run_ablations(load: Callable[..., LoadedSD], clip, ev: EvaluateConfig, edit_cfg: EditConfig, train_cfg,
                  emb: Embedders, lpips_model: LpipsModel | None, out_dir: str | Path,
                  subject: str | None = None) -> dict[str, list[dict]]:
    """Run Tables 2-4 on the first evaluate subject (or `subject`) -> {table title: rows}.
    `load(concepts=[...])` is lcd.models.pipeline.load_sd bound to the run's models config."""
    out = Path(out_dir)

    def load_base() -> LoadedPipeline:
        return load().lp

    # 1. inputs
    db = read_dreambench(ev.dreambench)
    name = subject or (ev.subjects[0] if ev.subjects else None)
    if name is None:
        raise LcdError("ablations need a subject (evaluate.subjects or --subject)", item="subject")
    if not ev.scenes:
        raise LcdError("ablations need at least one scene with a SAM mask (evaluate.scenes)", item="scenes")
    from lcd.evaluate.protocol import load_subject

    sub = load_subject(db, name)
    # 2. Table 2: real training runs
    t2, folder = training_table(load_base, Path(sub.photos[0]).parent, sub.class_word, train_cfg, out)
    # 3. Table 3: region modes on the scenes
    prompt = f"a {sub.class_word}"
    scenes = [Scene(n, img, m, prompt) for n, img, m in (load_scene(s, ev.scene_size) for s in ev.scenes)]
    t3 = region_ablation(load_base(), scenes, {"none": whole_image, "text": text_region(clip), "sam": sam_region},
                         edit_cfg, lpips_model)
    # 4. Table 4: the kv concept with and without its token
    provider = folder_concepts({name: folder}, concept_installer(lambda concepts: load(concepts=concepts)))
    ev1 = ev.model_copy(update={"subjects": [name]})
    res = run_protocol(token_ablation_methods(provider), ev1, edit_cfg, emb, lpips_model, out / "token")
    if res.failures:
        raise LcdError(f"token ablation failed: {res.failures[0]['error']}", item=name)
    return {"Table 2: K/V vs all-layer training": t2, "Table 3: region selection (background outside SAM region)": t3,
            "Table 4: with vs without the concept token": res.table}
