"""The regset stage per concept: lcd.regset's builder with the concept's class word as the
class prompt, the base model for the shortfall, and a cache shared by all concepts."""

from __future__ import annotations

from pathlib import Path

from lcd.config import ModelsConfig
from lcd.io.config import IoConfig
from lcd.jobs.training import concept_spec
from lcd.regset.build import RegsetReport, build_regset
from lcd.regset.config import RegsetConfig


def build_concept_regset(concept_dir: str | Path, out_dir: str | Path, cfg: RegsetConfig, models: ModelsConfig) -> Path:
    """Build `<out_dir>` for the concept in `concept_dir`; caches under `<out_dir>/../.cache`."""
    concept_regset(concept_dir, out_dir, cfg, models)
    return Path(out_dir)


def concept_regset(concept_dir: str | Path, out_dir: str | Path, cfg: RegsetConfig, models: ModelsConfig,
                   io_cfg: IoConfig | None = None) -> RegsetReport:
    """As build_concept_regset; -> the build's counts (selected, downloaded, failed, generated).
    `io_cfg` (params.yaml `io`) bounds its network reads."""
    from lcd.models.pipeline import load_sd

    spec = concept_spec(concept_dir)
    out = Path(out_dir)
    return build_regset(cfg.model_copy(update={"class_prompt": spec.class_word}), out, out.parent / ".cache",
                        sd_ref=models.sd, sd_variant=models.variant, load_pipeline=lambda: load_sd(models).lp, io_cfg=io_cfg)
