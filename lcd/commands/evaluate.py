"""`lcd evaluate`: score edits listed in a manifest, or run the DreamBench protocol in edit mode.

  lcd evaluate edits --manifest edits.json --out DIR
      manifest: [{"edit", "reference", "mask", "prompt", "class_word", "concept" (photo folder),
      "method" (optional)}]. Writes DIR/rows.json, DIR/metrics.json, DIR/report.html (+ .png).
  lcd evaluate dreambench --out DIR
      runs evaluate.* of params.yaml with the base model (class-word prompts) and writes the same.
Bad manifest entries are recorded in DIR/failures.json; the rest are scored.
"""

from __future__ import annotations

import json
from pathlib import Path

from lcd.commands import params_or_default


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="metrics, the DreamBench protocol and the report")
    s = p.add_subparsers(dest="evaluate_command", required=True)
    e = s.add_parser("edits", help="score edited images listed in a JSON manifest")
    e.add_argument("--manifest", required=True)
    e.add_argument("--out", required=True)
    d = s.add_parser("dreambench", help="DreamBench protocol in edit mode with the base model (class word)")
    d.add_argument("--out", required=True)
    d.add_argument("--dreambench", help="DreamBench root (overrides evaluate.dreambench)")
    d.add_argument("--n-prompts", type=int)
    for x in (e, d):
        x.add_argument("--device")
        x.add_argument("--loss-curves", help='JSON {"<run name>": [loss per step, ...]} to plot in the report')
    p.set_defaults(func=run)


def _metric_models(params, device):
    from lcd.evaluate.background import load_lpips
    from lcd.evaluate.embedders import load_embedders

    ev = params.evaluate
    emb = load_embedders(ev, params.models.clip, dtype=params.models.dtype, device=device)
    return emb, load_lpips(ev.lpips_net, ev.lpips_backbone, ev.lpips_linear, device=device)


def _notes(params, lp_model) -> list[str]:
    ev = params.evaluate
    notes = [f"CLIP-T is a raw cosine x {ev.clip_t_scale} (1.0 = published tables; Custom Diffusion's code uses 2.5).",
             "Background metrics: mean over unmasked pixels; SSIM/LPIPS on images zeroed inside the mask.",
             "PSNR of an untouched background is infinite (∞; \"inf\" in metrics.json)."]
    if not lp_model.comparable:
        notes.append("LPIPS backbone is random (evaluate.lpips_backbone: random): LPIPS numbers only rank.")
    return notes


def run(args) -> int:
    from lcd.evaluate.metrics import json_safe
    from lcd.evaluate.report import write_metrics_json, write_report
    from lcd.io.atomic import write_text_atomic

    params = params_or_default(args.params)
    device = args.device or params.models.device
    out = Path(args.out)
    curves = _loss_curves(args.loss_curves)  # bad input fails before any model is loaded
    # 1. metric models (a bad model reference fails here, before any editing)
    emb, lp_model = _metric_models(params, device)
    # 2. score a manifest, or edit + score the DreamBench protocol
    if args.evaluate_command == "edits":
        from lcd.evaluate.scoring import summarize

        rows, failures = _score_manifest(Path(args.manifest), params, emb, lp_model)
        table, sheets = summarize(rows, ("method",)), []
        tables = {"Per method": table}
    else:
        rows, table, tables, failures, sheets = _dreambench(args, params, device, out, emb, lp_model)
    # 3. rows, failures, metrics.json, report
    write_text_atomic(out / "rows.json", json.dumps(json_safe(rows), indent=1, allow_nan=False))
    write_text_atomic(out / "failures.json", json.dumps(failures, indent=1))
    write_metrics_json(out / "metrics.json", table)
    html, _ = write_report(out, title=f"LCDiffusion evaluation ({args.evaluate_command})", tables=tables,
                           sheets=sheets, loss_curves=curves, notes=_notes(params, lp_model))
    for f in failures:
        print(f"failed: {f.get('item')}: {f['error']}")
    print(html)
    return 0 if rows else 2


def _loss_curves(path: str | None) -> dict[str, list[float]] | None:
    from lcd.errors import LcdError

    if path is None:
        return None
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise LcdError(f"{p}: cannot read loss curves ({e})", item=str(p)) from None
    if not isinstance(doc, dict) or not all(isinstance(v, list) for v in doc.values()):
        raise LcdError(f"{p}: loss curves must be a JSON object of lists of numbers", item=str(p))
    return doc


def _score_manifest(manifest: Path, params, emb, lp_model):
    from lcd.errors import LcdError
    from lcd.evaluate.scoring import ConceptTable, EditRecord, clip_t_text, score_edits
    from lcd.io.images import load_image, load_mask

    if not manifest.is_file():
        raise LcdError(f"{manifest}: manifest not found", item=str(manifest))
    try:
        entries = json.loads(manifest.read_text())
    except json.JSONDecodeError as e:
        raise LcdError(f"{manifest}: not valid JSON ({e})", item=str(manifest)) from None
    if not isinstance(entries, list):
        raise LcdError(f"{manifest}: must be a JSON list of edits", item=str(manifest))
    records, methods, failures, photos = [], {}, [], {}
    keys = ("edit", "reference", "mask", "prompt", "class_word", "concept")
    for i, e in enumerate(entries):
        name = str(e.get("edit", f"entry {i}")) if isinstance(e, dict) else f"entry {i}"
        try:
            missing = [k for k in keys if not isinstance(e, dict) or k not in e]
            if missing:
                raise LcdError(f"{name}: manifest entry lacks {', '.join(missing)}", item=name)
            if e["concept"] not in photos:
                folder = Path(e["concept"])
                files = sorted(p for p in folder.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
                if not files:
                    raise LcdError(f"{folder}: concept folder has no photos", item=str(folder))
                photos[e["concept"]] = [load_image(p) for p in files]
            rec = EditRecord(name, load_image(e["edit"]), load_image(e["reference"]), load_mask(e["mask"]),
                             clip_t_text(e["prompt"], e["class_word"]), e["concept"])
            if rec.edit.shape != rec.reference.shape or rec.mask.shape != rec.edit.shape[:2] or not rec.mask.any():
                raise LcdError(f"{name}: edit, reference and a non-empty mask must have the same size", item=name)
            records.append(rec)
            methods[name] = e.get("method", "all")
        except LcdError as err:
            failures.append({"item": err.item, "error": str(err)})
    concepts = ConceptTable(emb, photos)
    rows = [{"method": methods[r["name"]], **r} for r in score_edits(records, concepts, emb, lp_model, params.evaluate)]
    return rows, failures


def _dreambench(args, params, device, out, emb, lp_model):
    from lcd.evaluate.protocol import Method, run_protocol
    from lcd.models.loader import load_sd_pipeline

    ev = params.evaluate
    upd = {k: v for k, v in (("dreambench", args.dreambench), ("n_prompts", args.n_prompts)) if v is not None}
    ev = type(ev).model_validate(ev.model_dump() | upd)
    m = params.models
    lp = load_sd_pipeline(m.sd, revision=m.sd_revision, dtype=m.dtype, device=device,
                          single_file_config=m.sd_single_file_config)
    res = run_protocol([Method("class-word", pipeline=lp)], ev, params.edit, emb, lp_model, out)
    tables = {"Per method": res.table, "Per method and subject": res.subject_table}
    return res.rows, res.table, tables, res.failures, res.sheets
