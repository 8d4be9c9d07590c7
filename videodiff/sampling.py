"""The sampling loop: scheduler steps with classifier-free guidance over a denoiser callable.

Knows nothing of files or of the U-Net: ``denoiser(x [b c f h w], t, context) -> eps``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def guided(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance (Ho & Salimans 2022, eq. 6): ``eps_u + s (eps_c - eps_u)``."""
    return eps_uncond + scale * (eps_cond - eps_uncond)


def uses_guidance(scale: float) -> bool:
    """Guidance runs the unconditional branch only above 1, as diffusers does."""
    return scale > 1.0


def sample(
    denoiser: Denoiser,
    latents: torch.Tensor,
    scheduler,
    *,
    steps: int,
    context: torch.Tensor,
    uncond_context: torch.Tensor | None,
    guidance: float,
    generator: torch.Generator | None = None,
    progress: bool = True,
    start: int = 0,
) -> torch.Tensor:
    """Denoise ``latents`` (``[b c f h w]``, already scaled by ``init_noise_sigma``) in ``steps`` steps.

    ``start > 0`` skips the first ``start`` steps: ``latents`` are then a clean guess noised to
    the timestep where sampling starts (:func:`noised_start`), as img2img does.

    ``context``/``uncond_context`` are ``[b n d]`` (or ``[b f n d]``); the unconditional one
    is used only when ``uses_guidance(guidance)``. ``generator`` feeds stochastic
    schedulers (euler-a), as diffusers passes it.
    """
    if latents.ndim != 5:
        raise ValueError(f"latents must be [b c f h w], got shape {tuple(latents.shape)}")
    # 1. timesteps
    set_start(scheduler, steps, start, latents.device)
    # 2. guidance batches the two branches: [uncond, cond]
    cfg = uses_guidance(guidance) and uncond_context is not None
    model_context = torch.cat([uncond_context, context]) if cfg else context
    step_kwargs = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
    # 3. the loop
    for t in tqdm(scheduler.timesteps[start:], disable=not progress, desc="denoising", leave=False):
        x = torch.cat([latents] * 2) if cfg else latents
        x = scheduler.scale_model_input(x, t)
        eps = denoiser(x, t, model_context)
        if cfg:
            eps_uncond, eps_cond = eps.chunk(2)
            eps = guided(eps_uncond, eps_cond, guidance)
        latents = scheduler.step(eps, t, latents, **step_kwargs).prev_sample
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
    set_start(scheduler, steps, start, clean.device)
    t = scheduler.timesteps[start : start + 1]
    return scheduler.add_noise(clean, noise, t)
