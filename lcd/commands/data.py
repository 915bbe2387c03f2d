"""`lcd data init`: materialise the DVC-tracked data/ folder from the bundled samples/."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("data", help="data/ folder utilities")
    dsub = p.add_subparsers(dest="data_command", required=True)
    i = dsub.add_parser("init", help="copy samples/{concepts,scenes,masks,manifests} into data/ (same bytes as data.dvc)")
    i.add_argument("--samples", default="samples", help="bundled samples folder to copy from")
    i.add_argument("--data", default="data", help="data folder to write into")
    i.set_defaults(func=run_init)


def run_init(args) -> int:
    from lcd.jobs.datasets import materialise_data

    written = materialise_data(args.samples, args.data)
    print(f"{args.data}: {len(written)} files written")
    return 0
