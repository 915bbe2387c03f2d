"""Samplers by name, built on the model's own noise schedule.

A model folder ships one scheduler class (SD1.5 ships PNDM; our tiny models DDIM) whose config
holds what matters for any sampler: the betas, the number of training timesteps, the timestep
spacing and the prediction type. `build_scheduler(name, config)` makes the named sampler from that
config, so `edit.scheduler` chooses the sampler whatever the folder ships.

`step_kwargs` passes only what the scheduler's `step` accepts, as diffusers' pipelines do in
`prepare_extra_step_kwargs`: `eta` only where it applies (DDIM), the per-item generators only to
samplers that draw noise during sampling (ancestral, SDE, DDIM with eta > 0).
"""

from __future__ import annotations

import inspect
from typing import Any, Mapping

from lcd.errors import LcdError

# name -> (diffusers class, overrides on the model's config, A1111's name for the PNG `parameters`)
SCHEDULERS: dict[str, tuple[str, dict[str, Any], str]] = {
    "ddim": ("DDIMScheduler", {}, "DDIM"),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}, "PLMS"),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}, "DPM++ 2M"),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}, "Euler a"),
    "euler": ("EulerDiscreteScheduler", {}, "Euler"),
    "unipc": ("UniPCMultistepScheduler", {}, "UniPC"),
}


def build_scheduler(name: str, config: Mapping[str, Any]):
    """A fresh scheduler `name` (a key of SCHEDULERS) on `config` (a diffusers scheduler config,
    e.g. `pipe.scheduler.config`). Fresh, because multistep samplers keep state between steps."""
    import diffusers

    if name not in SCHEDULERS:
        raise LcdError(f"edit.scheduler must be one of {sorted(SCHEDULERS)}, got {name!r}", item="scheduler")
    cls_name, overrides, _ = SCHEDULERS[name]
    return getattr(diffusers, cls_name).from_config(dict(config), **overrides)


def scheduler_class_name(name: str) -> str:
    """The diffusers class `name` builds (what metadata and item hashes record)."""
    return SCHEDULERS[name][0]


def sampler_label(name: str) -> str:
    """The sampler's A1111 name ('DDIM', 'DPM++ 2M', ...), for the PNG `parameters` chunk."""
    return SCHEDULERS[name][2]


def step_kwargs(scheduler, *, eta: float, generators: list | None) -> dict[str, Any]:
    """Keyword arguments for `scheduler.step` that it accepts: eta (DDIM), generator (samplers that
    draw noise per step; one CPU generator per item, so a result does not depend on its batch)."""
    accepted = set(inspect.signature(scheduler.step).parameters)
    kw: dict[str, Any] = {}
    if "eta" in accepted:
        kw["eta"] = eta
    if "generator" in accepted and generators is not None:
        kw["generator"] = generators
    return kw
