"""Scheduler names to diffusers scheduler objects.

``ddim``, ``euler``, ``euler-a``, ``dpm++`` and ``lcm`` use AnimateDiff's training schedule
(linear betas 0.00085-0.012; DDIM with clip_sample off) on top of the model's own scheduler
config (which keeps e.g. its prediction type), with the timestep spacing asked for (``linspace``,
AnimateDiff's, by default; ``trailing`` for AnimateDiff-Lightning, as its model card configures
``EulerDiscreteScheduler``). ``lcm`` is diffusers' ``LCMScheduler`` (AnimateLCM's), which picks its
steps from its own 50-step skipping schedule and so ignores the spacing.
``model`` is the model folder's scheduler exactly as shipped.
"""

from __future__ import annotations

from typing import Any

from videodiff.config import SCHEDULERS, TIMESTEP_SPACINGS
from videodiff.errors import UserError
from videodiff.log import notice

ANIMATEDIFF_SCHEDULE = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "linear",
    "timestep_spacing": "linspace",
    "steps_offset": 1,
}


def make_scheduler(name: str, model_config: dict[str, Any], spacing: str = "linspace"):
    """Build the scheduler called ``name`` (one of :data:`SCHEDULERS`) from the model's scheduler config,
    its steps spread by ``spacing`` (one of :data:`TIMESTEP_SPACINGS`; not for ``model``, ignored by ``lcm``)."""
    from diffusers import (
        DDIMScheduler,
        DPMSolverMultistepScheduler,
        EulerAncestralDiscreteScheduler,
        EulerDiscreteScheduler,
        LCMScheduler,
        SchedulerMixin,
    )

    config = {k: v for k, v in model_config.items() if not k.startswith("_")}
    if name in ("model", "lcm") and spacing != "linspace":
        notice(f"--timestep-spacing {spacing} has no effect with --scheduler {name} (its own schedule decides)")
    if name == "model":
        import diffusers

        cls_name = model_config.get("_class_name", "DDIMScheduler")
        cls = getattr(diffusers, cls_name, None)
        if cls is None or not issubclass(cls, SchedulerMixin):
            raise UserError(f"the model's scheduler {cls_name!r} is not a diffusers scheduler")
        return cls.from_config(config)
    if name not in SCHEDULERS:
        raise UserError(f"unknown --scheduler {name!r}; choose one of: {', '.join(SCHEDULERS)}")
    if spacing not in TIMESTEP_SPACINGS:
        raise UserError(f"unknown --timestep-spacing {spacing!r}; choose one of: {', '.join(TIMESTEP_SPACINGS)}")
    config.update(ANIMATEDIFF_SCHEDULE, timestep_spacing=spacing)
    if name == "ddim":
        return DDIMScheduler.from_config(config, clip_sample=False, set_alpha_to_one=False)
    if name == "euler":
        return EulerDiscreteScheduler.from_config(config)
    if name == "euler-a":
        return EulerAncestralDiscreteScheduler.from_config(config)
    if name == "lcm":
        return LCMScheduler.from_config(config)
    return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=2)
