"""Feature caching across sampling steps (DeepCache, Ma et al. 2024): a denoiser wrapper and its step hook.

Neighbouring denoising steps change the U-Net's deep, low-resolution features little. With
``every=N`` the whole video U-Net runs on every N-th step of a sampling run (steps 0, N, 2N, ...,
counted from where the run starts) and keeps what comes up from below its :data:`CACHE_LEVEL`
shallowest down/up block pairs; on the N-1 steps between, only those shallow blocks run (ResNets,
attention and their motion modules, on the skip connections the shallow down blocks give them)
and the kept features stand in for everything below (:meth:`VideoUNet.forward_split`).

:class:`FeatureCache` is the denoiser the sampler (or :class:`videodiff.windows.Windowed`) calls;
:meth:`FeatureCache.hook` wraps the run's step hook to tell it a step has ended. Features are
kept per call of a step: sliding windows call the denoiser once per window in a fixed order, so
each window reuses its own features (memory grows with the number of windows: one feature map of
the cut's resolution per window). A call whose batch or frames differ from its kept features'
(e.g. guidance turned off for some steps) runs the whole U-Net. One cache serves one sampling run:
FreeInit's passes and every render make their own, so nothing carries over between them.

Extra residuals (ControlNet, SparseCtrl: ``down_residuals`` and ``mid_residual`` of the conditioning
object) on a cached step: the shallow skips that still run get theirs added as on a full step; the
residuals of the skipped deep skips and of the middle block are not applied again: the kept deep
features already hold what they added on the last full step. A control's effect on the deep blocks is
thus refreshed every ``every`` steps, as the deep features are.
"""

from __future__ import annotations

import torch

from videodiff.config import MAX_CACHE
from videodiff.sampling.cond import Cond, as_cond

__all__ = ["CACHE_LEVEL", "MAX_CACHE", "FeatureCache"]

CACHE_LEVEL = 1
"""Down/up block pairs that still run on a cached step: 1 keeps only the shallowest (full-resolution) level,
as DeepCache's strongest setting does for SD1.5; what lies below it (the other down blocks, the middle block and
the up blocks that consume their skips, motion modules included) is reused. The most a cached step skips."""


class FeatureCache:
    """``unet`` as a denoiser that reuses its deep features for ``every - 1`` of every ``every`` steps.

    ``denoiser(x [b c f h w], t, cond) -> eps [b c f h w]``. ``every=1`` runs the whole U-Net every
    step (the same outputs as ``unet`` itself). ``level``: :data:`CACHE_LEVEL` unless given (1 to the
    number of down blocks minus 1). ``full_steps`` and ``cached_steps`` count the calls of each kind.
    """

    def __init__(self, unet, every: int, level: int = CACHE_LEVEL) -> None:
        if not 1 <= every <= MAX_CACHE:
            raise ValueError(f"every must be from 1 to {MAX_CACHE}, got {every}")
        self.unet = unet
        self.every = every
        self.level = min(level, len(unet.unet.down_blocks) - 1)
        self.step = 0  # the step the next calls belong to, counted from the start of the run
        self.call = 0  # calls within this step (a window's index under sliding windows)
        self.features: dict[int, torch.Tensor] = {}
        self.full_steps = 0
        self.cached_steps = 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Cond | torch.Tensor) -> torch.Tensor:
        cond = as_cond(cond)
        slot, self.call = self.call, self.call + 1
        kept = self.features.get(slot)
        reuse = self.step % self.every != 0 and kept is not None and kept.shape[0] == x.shape[0] * x.shape[2]
        if self.every == 1 or self.level < 1:
            self.full_steps += 1
            return self.unet(x, t, cond)
        eps, deep = self.unet.forward_split(x, t, cond, self.level, kept if reuse else None)
        if reuse:
            self.cached_steps += 1
        else:
            self.full_steps += 1
            self.features[slot] = deep
        return eps

    def end_step(self, i: int) -> None:
        """Step ``i`` (0-based from the run's start) is taken: the next calls belong to step ``i + 1``."""
        self.step, self.call = i + 1, 0

    def hook(self, then=None):
        """A step hook (:data:`videodiff.sampling.OnStep`) that ends the step here, then runs ``then``."""

        def on_step(i, total, t, t_next, latents, pass_index):
            self.end_step(i)
            return then(i, total, t, t_next, latents, pass_index) if then is not None else None

        return on_step
