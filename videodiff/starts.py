"""Where sampling starts: pure noise, or a clean guess noised part-way into the schedule (SDEdit).

Providers of starting latents plug in here at the level of the other stages: the motion
prior's guess of the moving object's track (:mod:`videodiff.motion_prior`) today, an image's
or a video's latents for img2vid and vid2vid next. Each gives a :class:`Start`; the pipeline
samples from it without knowing which provider made it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from videodiff import sampling


@dataclass
class Start:
    latents: torch.Tensor  # [b c f h w] in the scheduler's scaling, at the timestep of step `step`
    step: int = 0  # schedule steps skipped: 0 starts from pure noise
    record: dict[str, Any] = field(default_factory=dict)  # settings the start decided (recorded with the video)


def start_step(steps: int, fraction: float) -> int:
    """How many of ``steps`` a clean guess replaces at ``fraction`` (at least one step is left to run)."""
    return min(int(math.floor(steps * fraction + 0.5)), steps - 1)


def from_noise(noise: torch.Tensor, scheduler) -> Start:
    """Unit-variance ``noise`` (``[b c f h w]``) scaled by the scheduler's ``init_noise_sigma``: all steps run."""
    return Start(noise * scheduler.init_noise_sigma)


def from_clean(clean: torch.Tensor, noise: torch.Tensor, scheduler, steps: int, fraction: float) -> Start:
    """``clean`` (``[b c f h w]``) noised by ``noise`` to the timestep ``fraction`` into ``steps`` (SDEdit,
    Meng et al. 2022): the first :func:`start_step` steps are skipped."""
    step = start_step(steps, fraction)
    return Start(sampling.noised_start(scheduler, steps, step, clean, noise), step)
