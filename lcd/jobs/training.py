"""Train one concept folder into a concept weights folder: the unit the train stage and the
nightly job run. Wraps lcd.train (the loop) and lcd.concepts (the file format).

A concept folder is `<name>/` with 3-20 photos and, optionally, `concept.json`
(`{"class_word": "dog", "token": "[P]", "init_word": null}`); without it the folder name is the
class word and the token is `[P]`.

Either folder may be a URL. Photos at `s3://bucket/data/concepts/dog` are fetched once per machine
(lcd.io.cache). A weights folder at `s3://bucket/concepts/dog` is trained into a local staging
folder (one per URL, in the fetch cache folder) and published object by object (lcd.io.sync):
each checkpoint as soon as it is written (its state.json last, the mark of a whole checkpoint),
losses and the concept at the end, concept.safetensors last (the mark of a concept folder). A run
on another machine resumes from the newest checkpoint in the bucket.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from lcd.concepts.io import WEIGHTS_NAME, save_concept
from lcd.config import ModelsConfig
from lcd.io import cache, storage, sync
from lcd.io.config import IoConfig
from lcd.io.jsonfile import read_json
from lcd.train import checkpoint as ck
from lcd.train.config import ConceptSpec, TrainConfig
from lcd.train.loop import train_concepts

CONCEPT_SPEC_FILE = "concept.json"


def concept_spec(photos_dir: str | Path, name: str | None = None) -> ConceptSpec:
    """The ConceptSpec of a photos folder (concept.json, else `name` or the folder name as class word)."""
    d = Path(photos_dir)
    f = d / CONCEPT_SPEC_FILE
    raw = read_json(f, dict, "object") if f.exists() else {}
    return ConceptSpec.model_validate({"photos": str(d), "class_word": name or d.name} | raw)


def train_concept(photos_dir: str | Path, out_dir: str | Path, cfg: TrainConfig, models: ModelsConfig,
                  regset_dir: str | Path | None = None, io_cfg: IoConfig | None = None) -> Path | str:
    """Fine-tune the base model on one concept; write `<out_dir>/concept.safetensors` + card, and
    `<out_dir>/training/` (checkpoints, losses.csv). A regset folder, when it exists, is the prior.
    `photos_dir` / `out_dir` may be URLs (the module docstring); -> out_dir."""
    from lcd.models.pipeline import load_sd

    spec = concept_spec(cache.fetch_folder(str(photos_dir), io_cfg), storage.basename(photos_dir)) \
        if storage.is_remote(photos_dir) else concept_spec(photos_dir)
    if regset_dir is not None and Path(regset_dir).is_dir():
        cfg = cfg.model_copy(update={"reg_dir": str(regset_dir)})
    if not storage.is_remote(out_dir):
        lp = load_sd(models.for_training()).lp
        result = train_concepts(lp, [spec], cfg, work_dir=Path(out_dir) / "training", resume=True)
        return save_concept(result.concept, out_dir)
    url = str(storage.normalize(out_dir))
    work = cache.cache_root(io_cfg) / "staging" / f"train-{hashlib.sha256(url.encode()).hexdigest()[:24]}"
    with cache.locked(work.with_suffix(".lock"), url, io_cfg or IoConfig()):
        pull_checkpoint(url, work / "training" / "checkpoints", io_cfg)
        sent: dict[str, str] = {}

        def publish_checkpoints(step: int, loss: float) -> None:  # a checkpoint written since: up it goes
            publish(work, url, sent, only="training/checkpoints")

        lp = load_sd(models.for_training()).lp
        result = train_concepts(lp, [spec], cfg, work_dir=work / "training", resume=True, on_step=publish_checkpoints)
        save_concept(result.concept, work)
        publish(work, url, sent)
    return url


def publish(work: Path, url: str, sent: dict[str, str], only: str | None = None) -> None:
    """Upload what changed in the staging folder `work` (or its `only` subfolder) to `url`, marks
    last (a checkpoint's state.json, the concept's weights); drop the checkpoints the run pruned."""
    local, dest = (work / only, str(storage.join(url, *only.split("/")))) if only else (work, url)
    if not local.is_dir():
        return
    done = sync.upload_folder(local, dest, {k[len(only) + 1:]: v for k, v in sent.items() if k.startswith(only + "/")}
                              if only else sent, last=("state.json", WEIGHTS_NAME))
    if only:
        sent.update({f"{only}/{k}": v for k, v in done.items()})
    sync.remove_gone(work, url, sent, "training/checkpoints")


def pull_checkpoint(url: str, ckpt_root: Path, io_cfg: IoConfig | None = None) -> Path | None:
    """The bucket's newest whole checkpoint (`training/checkpoints/step-N/` with its state.json)
    copied into `ckpt_root` when this machine has none as new: a run killed on another machine
    resumes where it stopped. -> the checkpoint copied, or None."""
    remote_root = str(storage.join(url, "training", "checkpoints"))
    steps = sorted(n for n in storage.list_names(remote_root) if n.startswith("step-")
                   and storage.exists(str(storage.join(remote_root, n, "state.json"))))
    local = [p.name for p in ck.list_checkpoints(ckpt_root)]
    if not steps or (local and local[-1] >= steps[-1]):
        return None
    src = cache.fetch_folder(str(storage.join(remote_root, steps[-1])), io_cfg)
    dest = ckpt_root / steps[-1]
    shutil.copytree(src, ckpt_root / f".tmp-{steps[-1]}", dirs_exist_ok=True)
    (ckpt_root / f".tmp-{steps[-1]}").rename(dest)
    return dest
