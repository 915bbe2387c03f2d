"""Score a batch of finished edits (a manifest or the edit stage's results table) and write the
evaluation outputs: rows.json, failures.json, metrics.json and the report.

`evaluate_edits(results_table, out_dir, cfg, models)` is the evaluate stage's library function
(the Prefect task and `dvc repro` call it): it reads the edit stage's Parquet results (columns
image, region, concept, prompt, output, status; `region` must be a mask file here), compares each
output with its input image, and returns the per-group metric means (JSON-safe).
One bad entry never sinks the batch: it is recorded in failures.json and the rest are scored.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from lcd.errors import LcdError
from lcd.evaluate.background import LpipsModel, load_lpips
from lcd.evaluate.config import EvaluateConfig
from lcd.evaluate.embedders import Embedders, load_embedders
from lcd.evaluate.metrics import json_safe
from lcd.evaluate.scoring import ConceptTable, EditRecord, clip_t_text, score_edits, summarize
from lcd.io.images import image_files, load_image, load_mask

ENTRY_KEYS = ("edit", "reference", "mask", "prompt", "concept")


def concept_photos(folder: str | Path) -> list[Path]:
    """The concept's photos: image files in the folder, or in its `photos/` subfolder."""
    folder = Path(folder)
    for d in (folder, folder / "photos"):
        files = image_files(d)
        if files:
            return files
    raise LcdError(f"{folder}: concept folder has no photos (CLIP-I / DINO-I compare against them)", item=str(folder))


def score_entries(
    entries: Sequence[Any], cfg: EvaluateConfig, emb: Embedders, lpips_model: LpipsModel | None
) -> tuple[list[dict], list[dict]]:
    """Entries: {edit, reference, mask, prompt, concept (photo folder), class_word?, method?} ->
    (rows, failures). Without class_word the concept token is simply dropped from the prompt for
    CLIP-T ('a [P] dog' -> 'a dog', Custom Diffusion's prompt form)."""
    records, groups, failures, photos = [], {}, [], {}
    for i, e in enumerate(entries):
        name = str(e.get("edit", f"entry {i}")) if isinstance(e, dict) else f"entry {i}"
        try:
            missing = [k for k in ENTRY_KEYS if not isinstance(e, dict) or k not in e]
            if missing:
                raise LcdError(f"{name}: entry lacks {', '.join(missing)}", item=name)
            wrong = next((k for k in (*ENTRY_KEYS, "class_word", "method")
                          if e.get(k) is not None and not isinstance(e[k], str)), None)
            if wrong is not None:  # a number or list as a path would be a TypeError that sinks the batch
                from lcd.io.documents import kind

                raise LcdError(f"{name}: entry {i}: {wrong} must be a string, got {kind(e[wrong])}", item=name)
            if e["concept"] not in photos:
                photos[e["concept"]] = [load_image(p) for p in concept_photos(e["concept"])]
            rec = EditRecord(name, load_image(e["edit"]), load_image(e["reference"]), load_mask(e["mask"]),
                             clip_t_text(e["prompt"], e.get("class_word")), e["concept"])
            if rec.edit.shape != rec.reference.shape or rec.mask.shape != rec.edit.shape[:2]:
                raise LcdError(f"{name}: edit, reference and mask must have the same size", item=name)
            if not rec.mask.any():
                raise LcdError(f"{name}: mask is empty", item=name)
            records.append(rec)
            groups[name] = str(e.get("method", "all"))
        except LcdError as err:
            failures.append({"item": err.item, "error": str(err)})
    concepts = ConceptTable(emb, photos)
    scored = score_edits(records, concepts, emb, lpips_model, cfg, failures=failures)
    rows = [{"method": groups[r["name"]], **r} for r in scored]
    return rows, failures


def load_metric_models(cfg: EvaluateConfig, clip_default: str, dtype: str = "float32", device: str = "cpu"):
    """(Embedders, LpipsModel) through lcd's loaders."""
    emb = load_embedders(cfg, clip_default, dtype=dtype, device=device)
    return emb, load_lpips(cfg.lpips_net, cfg.lpips_backbone, cfg.lpips_linear, device=device)


def read_results_table(path: str | Path) -> list[dict]:
    """The edit stage's results Parquet -> entries for `score_entries` (edited / skipped rows)."""
    import pyarrow.parquet as pq

    p = Path(path)
    if not p.is_file():
        raise LcdError(f"{p}: edit results table not found", item=str(p))
    try:
        table = pq.read_table(p)
    except Exception as e:  # noqa: BLE001 - a torn or foreign file: one line naming it
        from lcd.io.documents import one_line

        raise LcdError(f"{p}: cannot read the results table: {one_line(str(e), 300)}", item=str(p)) from None
    need = {"image", "region", "concept", "prompt", "output"}
    if not need <= set(table.column_names):
        raise LcdError(f"{p}: results table lacks columns {sorted(need - set(table.column_names))}", item=str(p))
    rows = table.to_pylist()
    return [{"edit": r["output"], "reference": r["image"], "mask": r["region"], "prompt": r["prompt"],
             "concept": r["concept"], "method": Path(str(r["concept"])).name or "all"}
            for r in rows if r.get("status", "edited") in ("edited", "skipped")]


def write_outputs(out_dir: str | Path, rows, failures, tables, sheets=(), loss_curves=None, notes=(), title="evaluation",
                  config: dict | None = None):
    """rows.json, failures.json, metrics.json (first table, per method), config.json (the resolved
    config and model pins that produced them) and the report."""
    from lcd.evaluate.report import write_metrics_json, write_report
    from lcd.io.atomic import write_text_atomic

    out = Path(out_dir)
    write_text_atomic(out / "rows.json", json.dumps(json_safe(list(rows)), indent=1, allow_nan=False))
    write_text_atomic(out / "failures.json", json.dumps(list(failures), indent=1))
    write_metrics_json(out / "metrics.json", next(iter(tables.values())))
    if config is not None:
        write_text_atomic(out / "config.json", json.dumps(json_safe(config), indent=1, sort_keys=True, default=str))
    return write_report(out, title=title, tables=tables, sheets=sheets, loss_curves=loss_curves, notes=notes)


def evaluate_edits(results_table: str | Path, out_dir: str | Path, cfg: EvaluateConfig, models) -> dict:
    """The evaluate stage: score every edit in the results table -> {group: {metric: mean}} (JSON-safe)."""
    entries = read_results_table(results_table)
    emb, lp_model = load_metric_models(cfg, models.clip, models.dtype, models.device)
    rows, failures = score_entries(entries, cfg, emb, lp_model)
    table = summarize(rows, ("method",))
    write_outputs(out_dir, rows, failures, {"Per concept": table}, notes=notes_for(cfg, lp_model),
                  title="LCDiffusion evaluation", config=run_config(cfg, emb, lp_model))
    return json_safe({r["method"]: {k: v for k, v in r.items() if k != "method"} for r in table})


def run_config(cfg: EvaluateConfig, emb: Embedders, lp_model: LpipsModel | None, **extra) -> dict:
    """What produced a set of numbers: the evaluate config, the metric models' pins, LPIPS weights."""
    doc = {"evaluate": cfg.model_dump(), "models": {k: v.to_dict() for k, v in emb.sources.items()}}
    if lp_model is not None:
        doc["lpips"] = {"backbone": lp_model.backbone, "linear": lp_model.linear}
    return doc | extra


def notes_for(cfg: EvaluateConfig, lp_model: LpipsModel | None) -> list[str]:
    notes = [f"CLIP-T is a raw cosine x {cfg.clip_t_scale} (1.0 = published tables; Custom Diffusion's code uses 2.5).",
             "Background metrics: mean over unmasked pixels; SSIM/LPIPS on images zeroed inside the mask.",
             "PSNR of an untouched background is infinite (shown as ∞; \"inf\" in metrics.json)."]
    if lp_model is not None and not lp_model.comparable:
        notes.append("LPIPS backbone is random (evaluate.lpips_backbone: random): LPIPS numbers only rank.")
    return notes
