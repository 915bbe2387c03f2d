"""`lcd evaluate`: score edits listed in a manifest, or run the DreamBench protocol in edit mode.

  lcd evaluate edits --manifest edits.json --out DIR
      manifest: [{"edit", "reference", "mask", "prompt", "concept" (photo folder), "class_word"
      (optional), "method" (optional)}]. Writes DIR/rows.json, failures.json, metrics.json,
      report.html (+ report.png).
  lcd evaluate dreambench --out DIR
      runs evaluate.* of params.yaml with the base model (class-word prompts) and, per
      `--concept DIR` (or SUBJECT=DIR), a 'concept' method with that trained concept's token.
  lcd evaluate ablations --out DIR [--subject NAME]
      the paper's Tables 2-4 from real runs (train kv vs full, region modes, with/without token);
      writes DIR/ablations.json, metrics.json (Table 4) and report.html.
Bad manifest entries are recorded in DIR/failures.json and printed; the rest are scored.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lcd.commands import params_or_default


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="metrics, the DreamBench protocol and the report")
    s = p.add_subparsers(dest="evaluate_command", required=True)
    e = s.add_parser("edits", help="score edited images listed in a JSON manifest")
    e.add_argument("--manifest", required=True, help="JSON list of {edit, reference, mask, prompt, concept "
                                                     "(photo folder), class_word?, method?}")
    e.add_argument("--out", required=True, help="output folder (rows.json, failures.json, metrics.json, report.html)")
    d = s.add_parser("dreambench", help="DreamBench protocol in edit mode with the base model (class word)")
    d.add_argument("--out", required=True, help="output folder for the edits, rows.json, failures.json, "
                                                "metrics.json and report.html")
    d.add_argument("--dreambench", help="DreamBench root folder (default: params.yaml evaluate.dreambench)")
    d.add_argument("--n-prompts", type=int, help="edit with the first N of the 25 prompt templates "
                                                 "(default: params.yaml evaluate.n_prompts)")
    d.add_argument("--concept", action="append", default=[], metavar="DIR",
                   help="trained concept folder (`lcd train`; repeatable): DIR named after its DreamBench "
                        "subject, or SUBJECT=DIR. Adds a 'concept' method editing with its token")
    a = s.add_parser("ablations", help="Tables 2-4 from real training/edit runs (train.*, evaluate.*, edit.*)")
    a.add_argument("--out", required=True, help="output folder (ablations.json, metrics.json, report.html)")
    a.add_argument("--subject", help="DreamBench subject (default: the first of params.yaml evaluate.subjects)")
    a.add_argument("--dreambench", help="DreamBench root folder (default: params.yaml evaluate.dreambench)")
    a.add_argument("--device", help="torch device, e.g. cpu, cuda, cuda:1 (default: params.yaml models.device)")
    a.add_argument("--loss-curves", help=argparse.SUPPRESS)
    for x in (e, d):
        x.add_argument("--device", help="torch device, e.g. cpu, cuda, cuda:1 (default: params.yaml models.device)")
        x.add_argument("--loss-curves", help='JSON {"<run name>": [loss per step, ...]} to plot in the report')
    p.set_defaults(func=run)


def run(args) -> int:
    from lcd.evaluate.batch import load_metric_models, notes_for, run_config, write_outputs

    params = params_or_default(args.params)
    device = args.device or params.models.device
    if args.evaluate_command == "ablations":
        return _ablations(args, params, device)
    # 1. read inputs (bad files fail before any model is loaded)
    curves = _loss_curves(args.loss_curves)
    entries = _manifest(Path(args.manifest)) if args.evaluate_command == "edits" else None
    if args.evaluate_command == "dreambench":  # --n-prompts 0 is refused before any model loads
        params = params.model_copy(update={"evaluate": _dreambench_config(args, params.evaluate)})
    # 2. metric models
    emb, lp_model = load_metric_models(params.evaluate, params.models.clip, params.models.dtype, device)
    # 3. score a manifest, or edit + score the DreamBench protocol
    if entries is not None:
        from lcd.evaluate.batch import score_entries
        from lcd.evaluate.scoring import summarize

        rows, failures = score_entries(entries, params.evaluate, emb, lp_model)
        tables, sheets = {"Per method": summarize(rows, ("method",))}, []
    else:
        rows, tables, failures, sheets = _dreambench(args, params, device, Path(args.out), emb, lp_model)
    # 4. rows, failures, metrics.json, report
    html, _ = write_outputs(args.out, rows, failures, tables, sheets, curves, notes_for(params.evaluate, lp_model),
                            title=f"LCDiffusion evaluation ({args.evaluate_command})",
                            config=run_config(params.evaluate, emb, lp_model, edit=params.edit.model_dump(),
                                              sd=params.models.sd))
    for f in failures:
        print(f"failed: {f.get('item')}: {f['error']}")
    print(html)
    return 0 if rows else 2


def _manifest(path: Path) -> list:
    from lcd.errors import LcdError

    from lcd.io.jsonfile import read_json

    if not path.is_file():
        raise LcdError(f"{path}: manifest not found", item=str(path))
    return read_json(path, list, "list of edits")


def _loss_curves(path: str | None) -> dict[str, list[float]] | None:
    from lcd.errors import LcdError

    if path is None:
        return None
    from lcd.io.documents import parse_json, read_document_bytes

    p = Path(path)
    try:  # size, nesting and repeated keys limited; binary and UTF-16 named (lcd.io.documents)
        doc = parse_json(read_document_bytes(p, "loss curves file"), str(p))
    except LcdError as e:
        raise LcdError(f"{p}: cannot read loss curves ({str(e).removeprefix(f'{p}: ')})", item=str(p)) from None
    if not isinstance(doc, dict) or not all(isinstance(v, list) for v in doc.values()):
        raise LcdError(f"{p}: loss curves must be a JSON object of lists of numbers", item=str(p))
    return doc


def _dreambench_config(args, ev):
    """evaluate.* with --dreambench / --n-prompts, validated (a bad value names the option)."""
    upd = {k: v for k, v in (("dreambench", args.dreambench), ("n_prompts", args.n_prompts)) if v is not None}
    return type(ev).model_validate(ev.model_dump() | upd)


def _dreambench(args, params, device, out, emb, lp_model):
    from lcd.evaluate.protocol import Method, concept_folders, concept_installer, folder_concepts, run_protocol
    from lcd.models.pipeline import load_sd

    ev = params.evaluate
    folders = concept_folders(args.concept)  # bad specs fail before any model is loaded

    def load(concepts=()):
        return load_sd(params.models, concepts=concepts, scheduler=params.edit.scheduler, device=device)

    methods = [Method("class-word", pipeline=load().lp)]
    if folders:
        methods.append(Method("concept", concept=folder_concepts(folders, concept_installer(load))))
    res = run_protocol(methods, ev, params.edit, emb, lp_model, out)
    return res.rows, {"Per method": res.table, "Per method and subject": res.subject_table}, res.failures, res.sheets


def _ablations(args, params, device) -> int:
    from lcd.evaluate.ablation_runs import run_ablations
    from lcd.evaluate.batch import load_metric_models, notes_for
    from lcd.evaluate.report import write_metrics_json, write_report
    from lcd.evaluate.metrics import json_safe
    from lcd.io.atomic import write_text_atomic
    from lcd.models.loader import load_clip
    from lcd.models.pipeline import load_sd

    ev = params.evaluate
    if args.dreambench:
        ev = type(ev).model_validate(ev.model_dump() | {"dreambench": args.dreambench})
    m = params.models
    emb, lp_model = load_metric_models(ev, m.clip, m.dtype, device)
    if (ev.clip or m.clip) == m.clip and ev.clip_revision is None:  # the metric CLIP is models.clip: share it
        model, processor = emb.clip, emb.clip_processor
    else:
        model, processor, _ = load_clip(m.clip, dtype=m.dtype, device=device)

    def load(concepts=()):
        return load_sd(m, concepts=concepts, scheduler=params.edit.scheduler, device=device)

    tables = run_ablations(load, (model, processor), ev, params.edit, params.train.model_copy(update={"progress": False}),
                           emb, lp_model, args.out, subject=args.subject)
    out = Path(args.out)
    write_text_atomic(out / "ablations.json", json.dumps(json_safe(tables), indent=1, allow_nan=False))
    write_metrics_json(out / "metrics.json", tables["Table 4: with vs without the concept token"])
    html, _ = write_report(out, title="LCDiffusion ablations", tables=tables, notes=notes_for(ev, lp_model))
    print(html)
    return 0
