"""Guides: a denoiser and the conditioning object in, one guided model output per step out (sgm's guiders).

Classifier-free guidance batches both halves through :meth:`Cond.paired`, so every field of the
conditioning object (text, control residuals, image tokens, added embeddings) is batched by its own rule.
"""

from __future__ import annotations

from typing import Protocol

import torch

from videodiff.sampling.cond import Cond, as_cond
from videodiff.sampling.loop import Denoiser


def guided(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance (Ho & Salimans 2022, eq. 6): ``eps_u + s (eps_c - eps_u)``."""
    return eps_uncond + scale * (eps_cond - eps_uncond)


def uses_guidance(scale: float) -> bool:
    """Guidance runs the unconditional branch only above 1, as diffusers does."""
    return scale > 1.0


class Guide(Protocol):
    """An sgm-style guider: where per-frame guidance or other guiders plug in."""

    def __call__(self, denoiser: Denoiser, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The guided model output for latents ``x`` ``[b c f h w]`` (already ``scale_model_input``'ed)."""
        ...


class NoGuidance:
    """One denoiser call with the conditional halves of ``cond`` (a :class:`Cond`; a bare text context
    ``[b n d]`` or ``[b f n d]`` is wrapped)."""

    def __init__(self, cond: Cond | torch.Tensor):
        self.cond = as_cond(cond)

    def __call__(self, denoiser: Denoiser, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return denoiser(x, t, self.cond)


class ClassifierFreeGuidance:
    """Classifier-free guidance (Ho & Salimans 2022, eq. 6) with both branches in one denoiser batch.

    The batch is ``[uncond, cond]`` (latents concatenated on ``b``, every conditioning field batched by its
    own rule, :meth:`Cond.paired`), as diffusers' pipelines order it, and the output is
    ``eps_u + scale (eps_c - eps_u)``. ``uncond_context``: the unconditional text, when ``cond`` is a bare
    context tensor (a :class:`Cond` carries its own).
    """

    def __init__(self, scale: float, cond: Cond | torch.Tensor, uncond_context: torch.Tensor | None = None):
        self.scale = scale
        self.cond = Cond.text(cond, uncond_context) if isinstance(cond, torch.Tensor) else cond
        if self.cond.uncond is None:
            raise ValueError("classifier-free guidance needs an unconditional text context")
        self.batch = self.cond.paired()

    @property
    def batch_context(self) -> torch.Tensor:
        """The text context of the guided batch, ``[uncond, cond]`` on ``b``."""
        return self.batch.context

    def __call__(self, denoiser: Denoiser, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps = denoiser(torch.cat([x] * 2), t, self.batch)
        eps_uncond, eps_cond = eps.chunk(2)
        return guided(eps_uncond, eps_cond, self.scale)


class GuidanceInterval:
    """Guidance only in part of the schedule (Kynkäänniemi et al. 2024, "Applying guidance in a limited interval"):
    ``guide`` for the steps inside ``[low, high]``, the conditional prediction alone (one batch, not two) outside.

    Positions are fractions of the steps this run samples: step ``i`` of ``total`` is at ``i / (total - 1)``
    (0 the first and noisiest, 1 the last; a single step is at 0), both ends inclusive. Steps skipped by a
    part-way start (``start``: the motion prior, img2vid) are not counted: the interval spans the steps run.
    :func:`sample` asks :meth:`for_step` which guide each step uses.
    """

    def __init__(self, guide: ClassifierFreeGuidance, low: float, high: float):
        if not 0 <= low <= high <= 1:
            raise ValueError(f"the guidance interval must have 0 <= low <= high <= 1, got {low}, {high}")
        self.guide, self.low, self.high = guide, low, high
        self.conditional = NoGuidance(guide.cond)

    def inside(self, i: int, total: int) -> bool:
        """Whether step ``i`` (0-based) of ``total`` is guided."""
        position = i / (total - 1) if total > 1 else 0.0
        return self.low <= position <= self.high

    def for_step(self, i: int, total: int) -> Guide:
        return self.guide if self.inside(i, total) else self.conditional

    def __call__(self, denoiser: Denoiser, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.guide(denoiser, x, t)  # called without a step: guided (sample() always asks for_step)


def guide_for(
    scale: float,
    cond: Cond | torch.Tensor,
    uncond_context: torch.Tensor | None = None,
    interval: tuple[float, float] | None = None,
) -> Guide:
    """CFG when :func:`uses_guidance` (``scale > 1``) and ``cond`` has an unconditional text context, else
    NoGuidance; CFG only on the steps inside ``interval`` (:class:`GuidanceInterval`) when one narrower than
    ``(0, 1)`` is given. ``cond`` may be a bare text context, with ``uncond_context`` beside it."""
    if isinstance(cond, torch.Tensor):
        cond = Cond.text(cond, uncond_context)
    if uses_guidance(scale) and cond.uncond is not None:
        cfg = ClassifierFreeGuidance(scale, cond)
        if interval is None or tuple(interval) == (0, 1):
            return cfg
        return GuidanceInterval(cfg, *interval)
    return NoGuidance(cond)


