"""`python -m flows <stage> [options]`: run one stage's flow in this process.

DVC stage commands use it, so `dvc repro` runs the same flow code as the deployments. With
PREFECT_API_URL set the runs are recorded on that server; without it a temporary local one is
started that ends with this process, even when it is killed (flows.server).
"""

from __future__ import annotations

import argparse
import sys

from lcd.errors import LcdError


def _check_models(a: argparse.Namespace) -> None:
    """The SD folder a stage loads names no code (lcd.models.trust), checked before any run: a
    refused folder is one line here, not a failure row per item after a started run."""
    if a.stage in ("edit", "train", "nightly", "pipeline") and not (a.stage == "edit" and a.engine == "noop"):
        from lcd.config import load_params
        from lcd.models.loader import check_local_models

        check_local_models(load_params(a.params).models, ("sd",))


def _check_inputs(a: argparse.Namespace) -> None:
    """The params file every stage reads, and edit's manifest, parsed before Prefect starts: a
    hostile or broken file (too deep, binary, UTF-16, a repeated key) is one line here, not a
    traceback in a failed flow run (lcd.io.documents)."""
    from lcd.config import load_params

    load_params(a.params)
    if a.stage in ("edit", "pipeline"):
        from lcd.jobs.manifest import check_manifest_file

        check_manifest_file(a.manifest)


def main(argv: list[str] | None = None) -> int:
    from lcd.cli import OneLineParser  # a usage error in one line, as `lcd` prints it

    p = OneLineParser(prog="python -m flows")
    p.add_argument("stage", choices=["regset", "train", "masks", "edit", "evaluate", "nightly", "pipeline"])
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--data", default="data")
    p.add_argument("--out", default="outputs", help="outputs root")
    p.add_argument("--manifest", default="data/manifests/edits.jsonl")
    p.add_argument("--engine", default="diffusion", choices=["diffusion", "noop"])
    p.add_argument("--replan", action="store_true",
                   help="edit: plan --manifest even if <out>/edit holds the job of another manifest file")
    a = p.parse_args(argv)
    try:
        _check_inputs(a)
        _check_models(a)
    except Exception as e:  # noqa: BLE001 - before Prefect starts: one line, exit 2, as `lcd` does
        from lcd.cli import user_error

        msg = user_error(e)
        if msg is None:
            raise
        print(f"python -m flows {a.stage}: error: {msg}", file=sys.stderr)
        return 2
    from flows.server import temporary_server

    try:
        with temporary_server():  # Prefect's temporary server, when one is needed, ends with this process
            out = _run_stage(a)
    except LcdError as e:  # e.g. another coordinator holds the out_root (lcd.jobs.lease): one line
        from lcd.cli import user_error

        print(f"python -m flows {a.stage}: error: {user_error(e)}", file=sys.stderr)
        return 2
    print(out)
    return 0


def _run_stage(a: argparse.Namespace):
    """The stage's flow, run in this process -> its result."""
    if a.stage == "edit":
        from flows.edit_batch import edit_batch

        out = edit_batch(a.manifest, f"{a.out}/edit", a.params, num_shards=1, fan_out="inline", engine=a.engine,
                         concepts_root=f"{a.out}/concepts", masks_store=f"{a.out}/masks", replan=a.replan)
    elif a.stage == "regset":
        from flows.regset import build_regset

        out = build_regset(f"{a.data}/concepts", f"{a.out}/regset", a.params)
    elif a.stage == "train":
        from flows.train import train_concept

        out = train_concept(f"{a.data}/concepts", f"{a.out}/concepts", f"{a.out}/regset", a.params,
                            loss_csv=f"{a.out}/train_loss.csv")
    elif a.stage == "masks":
        from flows.masks import precompute_masks

        out = precompute_masks(f"{a.data}/scenes", f"{a.out}/masks", a.params)
    elif a.stage == "evaluate":
        from flows.evaluate import evaluate

        # dvc.yaml's evaluate command: it alone writes the tracked metrics.json (DVC's metrics file)
        out = evaluate(f"{a.out}/edit/results.parquet", f"{a.out}/evaluate", "metrics.json", a.params,
                       photos_root=f"{a.data}/concepts")
    elif a.stage == "nightly":
        from flows.nightly import nightly_concepts

        out = nightly_concepts(f"{a.data}/concepts", f"{a.out}/concepts", f"{a.out}/regset", a.params)
    else:
        from flows.pipeline import pipeline

        out = pipeline(a.manifest, a.data, a.out, a.params)
    return out


if __name__ == "__main__":
    sys.exit(main())
