"""The sampling loop: scheduler steps over a denoiser callable, with a guide and a per-step hook.

Knows nothing of files or of the U-Net: ``denoiser(x [b c f h w], t, cond) -> model output``
(eps, v, ... as the scheduler's prediction type says), where ``cond`` is the conditioning object
(:class:`videodiff.sampling.cond.Cond`). The shape is k-diffusion's (a loop over a denoiser callable)
with sgm's guider: a :class:`~videodiff.sampling.guidance.Guide` turns the denoiser into one guided
model output per step, and an :data:`OnStep` hook sees (and may replace) the latents after every
scheduler step. Diffusers' schedulers sit behind one small adapter, :class:`Schedule`.

Sliding windows over frames are a *denoiser wrapper* (:class:`videodiff.windows.Windowed`): for one
timestep it calls the wrapped denoiser on each window of frames and fuses the outputs into one
``[b c f h w]`` output, so the loop still takes exactly one scheduler step per timestep on the whole
video. Per-window scheduler steps would be wrong: dpm++ would push each window's output into one
shared multistep history, and euler-a would draw fresh ancestral noise once per window.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from videodiff.sampling.cond import Cond

if TYPE_CHECKING:
    from videodiff.sampling.guidance import Guide

Denoiser = Callable[[torch.Tensor, torch.Tensor, Cond], torch.Tensor]
"""``denoiser(x [b c f h w], t, cond) -> model output [b c f h w]``."""

OnStep = Callable[[int, int, torch.Tensor, torch.Tensor | None, torch.Tensor, int], torch.Tensor | None]
"""``on_step(i, total, t, t_next, latents, pass_index) -> latents | None``, after every scheduler step.

``i`` is the index of the step just taken among the ``total`` steps this run takes (0-based,
counted from ``start``), ``t`` its timestep, ``t_next`` the timestep the latents are now at
(``None`` after the last step), ``latents`` ``[b c f h w]``, ``pass_index`` as given to
:func:`sample`. Returning a tensor (even the same one) replaces the latents and restarts the solver's history
(:meth:`Schedule.restart`); return ``None`` to leave them as they are. Raise
:class:`Cancelled` to stop.
"""


class Cancelled(Exception):
    """Raised from an on_step hook to stop sampling cleanly (the web app's stop button)."""


class Schedule:
    """The one adapter over a diffusers scheduler (duck-typed: no diffusers import here).

    Sets ``steps`` timesteps and tells the scheduler sampling begins at step ``start``
    (:func:`set_start`); :attr:`timesteps` are the ones still to run from there.

    :meth:`restart` forgets the solver's history, so that after a hook has replaced the
    latents the remaining steps are exactly those of a fresh scheduler begun
    (``set_begin_index``) at the next step from the replaced latents. Per family, in
    diffusers 0.42:

    - DDIM, DDPM, Euler, Euler-a, LCM, TCD: no history (each step reads only its own
      timestep's sigma/alpha through ``step_index``): nothing to do.
    - multistep solvers, DPM-Solver(++) (``dpm++``), DEIS, UniPC, SA-Solver, EDM/cosine DPM
      (the first four checked against a fresh scheduler in tests/test_sampling.py):
      ``model_outputs`` and ``lower_order_nums`` (the previous outputs and the warm-up
      count) are reset as ``set_timesteps`` resets them; UniPC and SA-Solver also keep
      ``last_sample`` (their corrector reads it; ``None`` turns the corrector off for the
      next step, as in a fresh scheduler) and ``timestep_list`` (back to ``[None] * n`` as
      built in ``__init__``). The step counter ``_step_index`` is kept: a fresh scheduler
      begun at the next step has the same one.
    - LMS: ``derivatives`` emptied (as ``set_timesteps`` does; read from the source, untested
      here: LMS needs scipy).
    - PNDM (the SD1.5 folder's own scheduler) and DPM-Solver singlestep pair their
      steps through counters and a stored sample (``ets``/``counter``/``cur_sample``;
      ``model_outputs``/``sample``): clearing them mid-run would skip a noise level, so
      restart raises ``NotImplementedError`` rather than sample a wrong schedule. So do
      Heun and KDPM2 when a hook replaces latents half-way through their two-stage step.
    """

    def __init__(self, scheduler, steps: int, start: int = 0, device: torch.device | str | None = None):
        set_start(scheduler, steps, start, device)
        self.scheduler = scheduler
        self.steps = steps
        self.start = start
        self._takes_generator = "generator" in inspect.signature(scheduler.step).parameters

    @property
    def timesteps(self) -> torch.Tensor:
        """The timesteps still to run: the scheduler's from ``start`` on."""
        return self.scheduler.timesteps[self.start :]

    @property
    def init_noise_sigma(self) -> float | torch.Tensor:
        """The scale of unit noise at the first timestep (1 for DDIM/DPM-Solver, sigma_max-ish for Euler)."""
        return self.scheduler.init_noise_sigma

    def scale_model_input(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Latents as the denoiser expects them at ``t`` (Euler divides by ``sqrt(sigma^2 + 1)``)."""
        return self.scheduler.scale_model_input(x, t)

    def step(
        self,
        model_output: torch.Tensor,
        t: torch.Tensor,
        x: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """One scheduler step from ``x`` at ``t``: the previous (less noisy) sample."""
        kwargs = {"generator": generator} if self._takes_generator else {}
        return self.scheduler.step(model_output, t, x, **kwargs).prev_sample

    def add_noise(self, clean: torch.Tensor, noise: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        """``clean`` noised by ``noise`` to ``t`` (default: the first timestep still to run), q(x_t | x_0)."""
        if t is None:
            t = self.timesteps[:1]
        return self.scheduler.add_noise(clean, noise, t)

    def restart(self) -> None:
        """Forget the multistep history so the next step starts the solver afresh from the current latents."""
        s = self.scheduler
        name = type(s).__name__
        if not getattr(s, "state_in_first_order", True):
            raise NotImplementedError(f"{name} cannot restart half-way through its two-stage step")
        if hasattr(s, "lower_order_nums"):
            s.model_outputs = [None] * len(s.model_outputs)
            s.lower_order_nums = 0
            if hasattr(s, "timestep_list"):
                s.timestep_list = [None] * len(s.timestep_list)
            if hasattr(s, "last_sample"):
                s.last_sample = None
        elif hasattr(s, "derivatives"):
            s.derivatives = []
        elif hasattr(s, "ets") or hasattr(s, "model_outputs"):
            raise NotImplementedError(f"{name} pairs its steps; it cannot restart from replaced latents mid-run")


def sample(
    denoiser: Denoiser,
    latents: torch.Tensor,
    scheduler,
    *,
    steps: int,
    guide: Guide,
    on_step: OnStep | None = None,
    generator: torch.Generator | None = None,
    progress: bool = True,
    start: int = 0,
    pass_index: int = 0,
    desc: str = "denoising",
) -> torch.Tensor:
    """Denoise ``latents`` (``[b c f h w]``, already scaled by ``init_noise_sigma``) in ``steps`` steps.

    ``scheduler`` is a diffusers scheduler (wrapped here in a :class:`Schedule`) or a
    :class:`Schedule` built with the same ``steps`` and ``start``. ``start > 0`` skips the
    first ``start`` steps: ``latents`` are then a clean guess noised to the timestep where
    sampling starts (:func:`noised_start`), as img2img does.

    ``guide`` turns the denoiser into one model output per step (:func:`guide_for`); a guide with a
    ``for_step(i, total)`` method (:class:`GuidanceInterval`) names the guide of each step.
    ``on_step`` (:data:`OnStep`) runs after every scheduler step; a tensor it returns
    replaces the latents and restarts the solver (:meth:`Schedule.restart`); a
    :class:`Cancelled` it raises propagates to the caller, no further step taken.
    ``pass_index`` is handed to ``on_step`` (FreeInit's passes), ``desc`` to the progress bar.
    ``generator`` feeds stochastic schedulers (euler-a), as diffusers passes it.
    """
    if latents.ndim != 5:
        raise ValueError(f"latents must be [b c f h w], got shape {tuple(latents.shape)}")
    # 1. timesteps
    if isinstance(scheduler, Schedule):
        if (scheduler.steps, scheduler.start) != (steps, start):
            raise ValueError(
                f"the Schedule has steps={scheduler.steps}, start={scheduler.start}; sample got {steps}, {start}"
            )
        schedule = scheduler
    else:
        schedule = Schedule(scheduler, steps, start, latents.device)
    timesteps = schedule.timesteps
    total = len(timesteps)
    # 2. the loop: guided model output, one scheduler step, the hook
    with tqdm(total=total, disable=not progress, desc=desc, leave=False) as bar:
        for i, t in enumerate(timesteps):
            step_guide = guide.for_step(i, total) if hasattr(guide, "for_step") else guide
            model_output = step_guide(denoiser, schedule.scale_model_input(latents, t), t)
            latents = schedule.step(model_output, t, latents, generator)
            bar.update()
            if on_step is None:
                continue
            t_next = timesteps[i + 1] if i + 1 < total else None
            replaced = on_step(i, total, t, t_next, latents, pass_index)
            if replaced is not None:
                if replaced.shape != latents.shape:
                    shapes = f"{tuple(replaced.shape)}, latents are {tuple(latents.shape)}"
                    raise ValueError(f"on_step returned shape {shapes}")
                latents = replaced
                schedule.restart()
    return latents


def set_start(scheduler, steps: int, start: int, device: torch.device | str | None = None) -> None:
    """Set ``steps`` timesteps on ``scheduler`` and tell it that sampling begins at step ``start``."""
    if not 0 <= start < steps:
        raise ValueError(f"start must be from 0 to {steps - 1}, got {start}")
    scheduler.set_timesteps(steps, device=device)
    if start and hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start)


def noised_start(scheduler, steps: int, start: int, clean: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """``clean`` noised by ``noise`` to the timestep of step ``start`` of ``steps``, in the scheduler's own scaling."""
    return Schedule(scheduler, steps, start, clean.device).add_noise(clean, noise)
