"""ControlNets as a denoiser wrapper: the conditioning field they read, and :class:`Controlled`, which runs them.

The field (:class:`ControlInputs`, under the name :data:`CONTROLS` of the conditioning object) holds, per control,
its maps ``[b c f H W]`` in [0, 1], its scale and step range. It batches for guidance by repeating the maps (both
halves are controlled, as diffusers' AnimateDiff ControlNet pipelines do) and slices for a window by frames, so
sliding windows give every window its own frames' maps with no code of their own.

:class:`Controlled` sits between the windows and the U-Net (``Windowed(Controlled(FeatureCache(unet)))``): for each
call it runs every control whose step range holds the step, sums their residuals (diffusers'
``MultiControlNetModel``) and hands the U-Net ``down_residuals`` and ``mid_residual``
(:mod:`videodiff.sampling.cond`). The ControlNets run on every step they are in range, also on steps that
:mod:`videodiff.cache` shortens (the rule for cached steps is stated there).

Step ranges count the steps a sampling run takes (its :class:`~videodiff.sampling.Schedule`'s timesteps, from
where it starts: img2vid and vid2vid start part-way, as diffusers' video-to-video pipeline counts them): step
``i`` of ``n`` is controlled when ``START <= i / n`` and ``(i + 1) / n <= END`` (diffusers' ``controlnet_keep``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from einops import rearrange, repeat

from videodiff.errors import UserError
from videodiff.sampling.cond import (
    DOWN_RESIDUALS,
    MID_RESIDUAL,
    TEXT_EMBEDS,
    TIME_IDS,
    Cond,
    Residuals,
    TensorField,
    as_cond,
)
from videodiff.settings.control import CONTROLS

__all__ = ["CONTROLS", "ControlInput", "ControlInputs", "Controlled", "in_range"]


def in_range(step: int, steps: int, start: float, end: float) -> bool:
    """Whether step ``step`` of ``steps`` is controlled under the range ``[start, end]`` (diffusers' rule)."""
    return not (step / steps < start or (step + 1) / steps > end)


@dataclass(frozen=True)
class ControlInput:
    """One control: ``net`` indexes :class:`Controlled`'s networks; ``maps`` ``[b c f H W]`` in [0, 1] (pixels, the
    video's size; an RGB SparseCtrl's: the pictures' scaled VAE latents ``[b 4 f h w]``, zeros where no picture
    is given); ``mask`` ``[b 1 f H W]`` (``[b 1 f h w]``) marks the frames given (SparseCtrl), ``None`` for a map
    per frame."""

    net: int
    maps: torch.Tensor
    scale: float = 1.0
    start: float = 0.0
    end: float = 1.0
    mask: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.maps.ndim != 5:
            raise ValueError(f"maps must be [b c f H W], got shape {tuple(self.maps.shape)}")

    def _map(self, fn) -> ControlInput:
        return replace(self, maps=fn(self.maps), mask=None if self.mask is None else fn(self.mask))


@dataclass(frozen=True)
class ControlInputs:
    """The controls of a render, as a field of the conditioning object (:class:`~videodiff.sampling.cond.Field`)."""

    items: tuple[ControlInput, ...]

    def paired(self) -> ControlInputs:
        return ControlInputs(tuple(c._map(lambda m: torch.cat([m, m])) for c in self.items))

    def frames(self, index: torch.Tensor) -> ControlInputs:
        return ControlInputs(tuple(c._map(lambda m: m.index_select(2, index.to(m.device))) for c in self.items))

    def to(self, device=None, dtype=None) -> ControlInputs:
        return ControlInputs(tuple(c._map(lambda m: m.to(device=device, dtype=dtype or m.dtype)) for c in self.items))


def _per_frame_context(context: torch.Tensor, frames: int) -> torch.Tensor:
    """Text tokens ``[b n d]`` or ``[b f n d]`` as ``[(b f) n d]``: an image ControlNet sees one frame at a time."""
    if context.ndim == 4:
        return rearrange(context, "b f n d -> (b f) n d")
    return repeat(context, "b n d -> (b f) n d", f=frames)


def _added_conditioning(net, cond: Cond, frames: int, dtype: torch.dtype) -> dict[str, torch.Tensor] | None:
    """What an SDXL ControlNet's time embedding takes besides the timestep (``addition_embed_type="text_time"``):
    the pooled text and size ids of ``cond`` (``[b d]``, or ``[b f d]`` with prompt travel) as one row per frame,
    ``[(b f) d]``, the rows the SDXL U-Net's time embedding gets; ``None`` for a ControlNet without (SD1.5's)."""
    if getattr(net, "config", {}).get("addition_embed_type") != "text_time":
        return None
    missing = [name for name in (TEXT_EMBEDS, TIME_IDS) if name not in cond]
    if missing:
        raise ValueError(f"an SDXL ControlNet's time embedding needs {missing} in the conditioning")

    def rows(x: torch.Tensor) -> torch.Tensor:
        return rearrange(x, "b f d -> (b f) d") if x.ndim == 3 else repeat(x, "b d -> (b f) d", f=frames)

    return {name: rows(cond[name]).to(dtype) for name in (TEXT_EMBEDS, TIME_IDS)}


def run_controlnet(net, x: torch.Tensor, t: torch.Tensor, cond: Cond | torch.Tensor, item: ControlInput):
    """One ControlNet on latents ``x`` ``[b c f h w]``: its residuals, each ``[b c f h w]`` (down) and the middle's.

    An image ControlNet (diffusers' ``ControlNetModel``) runs on the frames folded into the batch, as
    ``AnimateDiffControlNetPipeline`` runs it, an SDXL one with the pooled text and size ids of each frame
    (``added_cond_kwargs``, as the SDXL U-Net gets them); a SparseCtrl one (``SparseControlNetModel``, with its own
    motion modules) takes the video whole, with the mask of the frames given. ``cond``: the conditioning of the
    call (a bare text context tensor for a ControlNet that reads only the text)."""
    cond = as_cond(cond)
    context = cond.context
    b, f = x.shape[0], x.shape[2]
    dtype = next(net.parameters()).dtype
    if item.mask is not None:
        longest = net.config.get("motion_max_seq_length")
        if longest is not None and f > longest:  # its positional encoding ends there
            raise UserError(
                f"the SparseCtrl model sees at most {longest} frames at once, this render {f}: give --window "
                f"{longest} or less (with --window-layers unet), or fewer --frames"
            )
        down, mid = net(
            x.to(dtype),
            t,
            encoder_hidden_states=_per_frame_context(context, f).to(dtype),
            controlnet_cond=item.maps.to(dtype),
            conditioning_mask=item.mask.to(dtype),
            conditioning_scale=item.scale,
            return_dict=False,
        )
    else:
        added = _added_conditioning(net, cond, f, dtype)
        down, mid = net(
            rearrange(x, "b c f h w -> (b f) c h w").to(dtype),
            t,
            encoder_hidden_states=_per_frame_context(context, f).to(dtype),
            controlnet_cond=rearrange(item.maps, "b c f h w -> (b f) c h w").to(dtype),
            conditioning_scale=item.scale,
            return_dict=False,
            **({} if added is None else {"added_cond_kwargs": added}),
        )
    unfold = lambda r: rearrange(r, "(b f) c h w -> b c f h w", b=b).to(x.dtype)  # noqa: E731
    return tuple(unfold(r) for r in down), unfold(mid)


class Controlled:
    """``denoiser(x [b c f h w], t, cond)`` with the controls of ``cond`` (:data:`CONTROLS`) added as residuals.

    ``nets``: the ControlNets the controls index; ``timesteps``: the timesteps of the sampling run, in order (a
    step's index among them decides which controls are in range). Without a ``controls`` field it is ``denoiser``.
    ``runs`` counts ControlNet calls (for tests and benchmarks).
    """

    def __init__(self, denoiser, nets: Sequence[torch.nn.Module], timesteps: Sequence[float] | torch.Tensor) -> None:
        self.denoiser = denoiser
        self.nets = list(nets)
        self.steps = {float(t): i for i, t in enumerate(timesteps)}
        self.total = len(self.steps)
        self.runs = 0

    def step_of(self, t: torch.Tensor | float) -> int:
        value = float(t)
        if value in self.steps:
            return self.steps[value]
        nearest = min(self.steps, key=lambda s: abs(s - value))  # a scheduler that hands t in another dtype
        if abs(nearest - value) > 1e-3:
            raise ValueError(f"timestep {value} is not among this run's timesteps")
        return self.steps[nearest]

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Cond | torch.Tensor) -> torch.Tensor:
        cond = as_cond(cond)
        if CONTROLS not in cond:
            return self.denoiser(x, t, cond)
        step = self.step_of(t)
        down: tuple[torch.Tensor, ...] | None = None
        mid: torch.Tensor | None = None
        for item in cond[CONTROLS].items:
            if item.scale == 0 or not in_range(step, self.total, item.start, item.end):
                continue  # diffusers multiplies these residuals by 0; adding nothing is the same sum
            d, m = run_controlnet(self.nets[item.net], x, t, cond, item)
            self.runs += 1
            down = d if down is None else tuple(a + b for a, b in zip(down, d))
            mid = m if mid is None else mid + m
        cond = cond.without(CONTROLS)
        if down is not None:
            if DOWN_RESIDUALS in cond:  # residuals given by the caller too: they add
                down = (cond[DOWN_RESIDUALS] + Residuals(down)).values
                mid = mid + cond[MID_RESIDUAL]
            cond = cond.with_fields(**{DOWN_RESIDUALS: Residuals(down), MID_RESIDUAL: TensorField(mid, frame_axis=2)})
        return self.denoiser(x, t, cond)
