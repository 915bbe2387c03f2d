"""The one way Stable Diffusion loads from configuration: `load_sd(models_cfg, ...)`.

Every command, job and evaluation calls it: it loads the base model named by `models` (hub id
with pinned revision, diffusers folder, or single-file checkpoint) on its device and dtype,
installs the sampler named by `scheduler` (built on the model's own noise schedule), and applies
the given concept folders (tokens added, K/V or LoRA weights installed), checking each was trained
for this base. Returns the LoadedPipeline plus what callers need of the concepts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from lcd.concepts.io import Concept, apply_concepts, base_mismatch, load_concept
from lcd.models.config import ModelsConfig
from lcd.models.loader import LoadedPipeline, load_sd_pipeline
from lcd.models.schedulers import build_scheduler


@dataclass
class LoadedSD:
    """The loaded pipeline and the concepts applied to it (in order)."""

    lp: LoadedPipeline
    concepts: list[Concept] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # e.g. a concept trained on other weights

    @property
    def tokens(self) -> list[str]:
        """Every concept token now known to the tokenizer, in concept order."""
        return [t for c in self.concepts for t in c.tokens]


def load_sd(
    models: ModelsConfig,
    *,
    concepts: Sequence[str | Path | Concept] = (),
    scheduler: str | None = None,
    ref: str | None = None,
    device: str | None = None,
) -> LoadedSD:
    """Load the base model of `models` (or `ref`, a CLI `--model`) on `device` (default
    models.device), install `scheduler` (a lcd.models.schedulers name; None keeps the model's),
    and apply `concepts` (folders or loaded Concepts). Raises ModelLoadError naming the model or
    the concept."""
    # 1. concepts first: a bad folder fails before gigabytes of weights load
    loaded = [c if isinstance(c, Concept) else load_concept(c) for c in concepts]
    # 2. the base model
    lp = load_sd_pipeline(ref or models.sd, revision=models.sd_revision, dtype=models.dtype,
                          device=device or models.device, single_file_config=models.sd_single_file_config,
                          vae_dtype=models.vae_dtype, variant=models.variant)
    # 3. the sampler, on the model's own schedule
    if scheduler is not None:
        lp.pipe.scheduler = build_scheduler(scheduler, lp.pipe.scheduler.config)
    # 4. the concepts, all checked before any is applied
    if loaded:
        apply_concepts(lp.pipe, loaded)
    warnings = [m for c in loaded if (m := base_mismatch(c, lp.source)) is not None]
    return LoadedSD(lp=lp, concepts=loaded, warnings=warnings)
