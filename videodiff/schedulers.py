"""Scheduler names to diffusers scheduler objects.

``ddim``, ``euler``, ``euler-a`` and ``dpm++`` use AnimateDiff's training schedule
(linear betas 0.00085-0.012; DDIM with clip_sample off and linspace spacing) on top
of the model's own scheduler config (which keeps e.g. its prediction type);
``model`` is the model folder's scheduler exactly as shipped.
"""

from __future__ import annotations

from typing import Any

from videodiff.config import SCHEDULERS
from videodiff.errors import UserError

ANIMATEDIFF_SCHEDULE = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "linear",
    "timestep_spacing": "linspace",
    "steps_offset": 1,
}


def make_scheduler(name: str, model_config: dict[str, Any]):
    """Build the scheduler called ``name`` (one of :data:`SCHEDULERS`) from the model's scheduler config."""
    from diffusers import (
        DDIMScheduler,
        DPMSolverMultistepScheduler,
        EulerAncestralDiscreteScheduler,
        EulerDiscreteScheduler,
        SchedulerMixin,
    )

    config = {k: v for k, v in model_config.items() if not k.startswith("_")}
    if name == "model":
        import diffusers

        cls_name = model_config.get("_class_name", "DDIMScheduler")
        cls = getattr(diffusers, cls_name, None)
        if cls is None or not issubclass(cls, SchedulerMixin):
            raise UserError(f"the model's scheduler {cls_name!r} is not a diffusers scheduler")
        return cls.from_config(config)
    if name not in SCHEDULERS:
        raise UserError(f"unknown --scheduler {name!r}; choose one of: {', '.join(SCHEDULERS)}")
    config.update(ANIMATEDIFF_SCHEDULE)
    if name == "ddim":
        return DDIMScheduler.from_config(config, clip_sample=False, set_alpha_to_one=False)
    if name == "euler":
        return EulerDiscreteScheduler.from_config(config)
    if name == "euler-a":
        return EulerAncestralDiscreteScheduler.from_config(config)
    return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=2)
