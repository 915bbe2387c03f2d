"""Train stage tasks: one concept (lcd.jobs.training), and the loss curves for `dvc plots`."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from lcd.config import load_params
from lcd.io.atomic import write_text_atomic
from lcd.io.images import save_png
from lcd.jobs.plots import line_chart
from lcd.jobs.training import train_concept


@task(cache_policy=NO_CACHE)
def train_concept_task(photos_dir: str, out_dir: str, params_path: str, regset_dir: str | None = None) -> str:
    params = load_params(params_path)
    return str(train_concept(photos_dir, out_dir, params.train, params.models, regset_dir=regset_dir,
                             io_cfg=params.io))  # folders or URLs


@task(cache_policy=NO_CACHE)
def collect_loss_curves(out_root: str, names: list[str], dest: str) -> str:
    """`<out_root>/<name>/training/losses.csv` (step,loss,..., written by lcd.train) -> one
    `dest` CSV (concept,step,loss) for `dvc plots`. Concepts without a curve are left out."""
    rows, series = ["concept,step,loss\n"], {}
    for name in names:
        f = Path(out_root) / name / "training" / "losses.csv"
        if f.exists():
            lines = f.read_text().splitlines()
            cols = lines[0].split(",")
            i_step, i_loss = cols.index("step"), cols.index("loss")
            vals = [(v[i_step], v[i_loss]) for v in (x.split(",") for x in lines[1:] if x.strip())]
            rows += [f"{name},{s},{loss}\n" for s, loss in vals]
            series[name] = ([float(s) for s, _ in vals], [float(loss) for _, loss in vals])
    save_png(Path(dest).with_suffix(".png"), line_chart(series, "training loss", "step", "loss"))  # offline-safe twin
    return str(write_text_atomic(dest, "".join(rows)))
