"""Train one concept folder into a concept weights folder: the unit the train stage and the
nightly job run. Wraps lcd.train (the loop) and lcd.concepts (the file format).

A concept folder is `<name>/` with 3-20 photos and, optionally, `concept.json`
(`{"class_word": "dog", "token": "[P]", "init_word": null}`); without it the folder name is the
class word and the token is `[P]`.
"""

from __future__ import annotations

from pathlib import Path

from lcd.concepts.io import save_concept
from lcd.config import ModelsConfig
from lcd.io.jsonfile import read_json
from lcd.train.config import ConceptSpec, TrainConfig
from lcd.train.loop import train_concepts

CONCEPT_SPEC_FILE = "concept.json"


def concept_spec(photos_dir: str | Path) -> ConceptSpec:
    """The ConceptSpec of a photos folder (concept.json, else folder name as class word)."""
    d = Path(photos_dir)
    f = d / CONCEPT_SPEC_FILE
    raw = read_json(f, dict, "object") if f.exists() else {}
    return ConceptSpec.model_validate({"photos": str(d), "class_word": d.name} | raw)


def train_concept(photos_dir: str | Path, out_dir: str | Path, cfg: TrainConfig, models: ModelsConfig,
                  regset_dir: str | Path | None = None) -> Path:
    """Fine-tune the base model on one concept; write `<out_dir>/concept.safetensors` + card, and
    `<out_dir>/training/` (checkpoints, losses.csv). A regset folder, when it exists, is the prior."""
    from lcd.models.pipeline import load_sd

    spec = concept_spec(photos_dir)
    if regset_dir is not None and Path(regset_dir).is_dir():
        cfg = cfg.model_copy(update={"reg_dir": str(regset_dir)})
    lp = load_sd(models.for_training()).lp
    result = train_concepts(lp, [spec], cfg, work_dir=Path(out_dir) / "training", resume=True)
    return save_concept(result.concept, out_dir)
