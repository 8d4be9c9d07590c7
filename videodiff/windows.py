"""Sliding windows over frames: a denoiser wrapper for videos longer than the motion modules saw.

For one timestep :class:`Windowed` runs the wrapped denoiser (the whole video U-Net,
``denoiser(x [b c f h w], t, cond)``) on each window of frames and fuses the windows' model
outputs into one ``[b c f h w]`` output, weighted where windows overlap; the sampler then takes
one scheduler step on the whole video (:mod:`videodiff.sampling` says why not one per window).
Peak memory follows the window, not the video: the U-Net never holds more than one window.

Windows are ``window`` frames long and start every ``window - overlap`` frames; the last one is
moved back to end at the last frame (so no window is shorter than the others and frames that
are not a multiple of the stride are still covered). With ``loop`` they instead run on past the
end and wrap around to frame 0, so the last frames are denoised together with the first ones
(a closed loop). Weights per window: ``flat`` (ones), ``pyramid`` (``min(i + 1, n - i)``, peaked
at the middle) or ``overlap-linear`` (ones with linear ramps over the ``overlap`` frames at each
end); every weight is positive, so every frame's total weight is too.

The batch axis is left alone (classifier-free guidance doubles it); the conditioning object is cut
to each window by its fields' own rule (:meth:`videodiff.sampling.Cond.frames`): text context ``[b n d]``
goes to every window as is, ``[b f n d]`` (prompt travel), control maps or per-frame image tokens are
sliced to the window's frames.

``layers="temporal"`` is the other way (FreeNoise's, as diffusers does it): the U-Net runs once on
every frame and only its motion modules' attention goes window by window, fused the same way
(:meth:`videodiff.unet.temporal.MotionStack.temporal_windows`); memory then grows with the video.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from videodiff.config import FUSE_KINDS, MAX_FRAMES, WINDOW_LAYERS, too_many_frames
from videodiff.errors import UserError
from videodiff.sampling.cond import Cond, as_cond

__all__ = ["FUSE_KINDS", "MAX_FRAMES", "Windowed", "WindowPlan", "fuse_weights", "plan_windows", "window_indices"]


@dataclass(frozen=True)
class WindowPlan:
    """How a video of ``frames`` frames is cut: windows of ``window`` frames overlapping by ``overlap``."""

    frames: int
    window: int
    overlap: int
    fuse: str = "pyramid"
    loop: bool = False
    layers: str = "unet"  # what runs per window: the whole U-Net (Windowed), or the temporal attention only

    def weights(self) -> list[torch.Tensor]:
        """Each window's fusing weights (:func:`fuse_weights`), in the order of :meth:`indices`."""
        return [fuse_weights(len(w), self.fuse, self.overlap) for w in self.indices()]

    @property
    def stride(self) -> int:
        return self.window - self.overlap

    def indices(self) -> list[list[int]]:
        return window_indices(self.frames, self.window, self.overlap, self.loop)


def describe(plan: WindowPlan, train_frames: int) -> str:
    """What a render through ``plan`` tells its user, once: the windows and why."""
    return (
        f"{plan.frames} frames sampled in sliding windows of {plan.window} frames overlapping by {plan.overlap} "
        f"(the motion modules were trained on {train_frames}; --window and --overlap change this)"
    )


def window_indices(frames: int, window: int, overlap: int, loop: bool = False) -> list[list[int]]:
    """The frame indices of each window, in order. One window of all frames when they fit in one."""
    if frames <= window:
        return [list(range(frames))]
    stride = window - overlap
    if loop:
        # starts every stride until the frames are covered; windows past the end wrap to frame 0
        return [[(s + j) % frames for j in range(window)] for s in range(0, frames, stride)]
    starts = list(range(0, frames - window + 1, stride))
    if starts[-1] + window < frames:
        starts.append(frames - window)  # the last window ends at the last frame
    return [list(range(s, s + window)) for s in starts]


def fuse_weights(size: int, kind: str = "pyramid", overlap: int = 0) -> torch.Tensor:
    """Per-frame weights ``[size]`` (float32, all positive) of one window's output in the fused one."""
    if kind == "flat":
        return torch.ones(size)
    i = torch.arange(size, dtype=torch.float32)
    if kind == "pyramid":
        return torch.minimum(i + 1, size - i)
    if kind == "overlap-linear":
        ramp = max(int(overlap), 0)
        return torch.minimum(torch.minimum(i + 1, size - i) / (ramp + 1), torch.ones(size))
    raise UserError(f"unknown --fuse {kind!r}; choose one of: {', '.join(FUSE_KINDS)}")


def plan_windows(
    frames: int,
    *,
    window: int | None,
    overlap: int | None,
    fuse: str = "pyramid",
    loop: bool = False,
    layers: str = "unet",
    train_frames: int,
    limit: int,
) -> WindowPlan | None:
    """The windows for ``frames`` (``None``: the video is one window, sampled plainly).

    ``window`` defaults to ``train_frames`` (at most ``limit``, the positional encoding's length),
    ``overlap`` to a quarter of the window; ``layers``: what runs per window (``unet`` or ``temporal``). A window
    over ``limit`` frames, or more than
    :data:`MAX_FRAMES` frames, is a :class:`UserError`.
    """
    if frames > MAX_FRAMES:
        raise too_many_frames(frames)
    if window is not None and window > limit:
        raise UserError(
            f"--window {window} exceeds the motion modules' positional encoding of {limit} frames; "
            f"use --window {limit} or less"
        )
    size = window if window is not None else min(train_frames, limit)
    if frames <= size:
        return None  # one window: plain sampling (a loop needs more frames than a window to wrap)
    overlap = size // 4 if overlap is None else overlap
    if not 0 <= overlap < size:
        raise UserError(f"--overlap must be from 0 to {size - 1} (less than the window of {size}), got {overlap}")
    if fuse not in FUSE_KINDS:
        raise UserError(f"unknown --fuse {fuse!r}; choose one of: {', '.join(FUSE_KINDS)}")
    if layers not in WINDOW_LAYERS:
        raise UserError(f"unknown --window-layers {layers!r}; choose one of: {', '.join(WINDOW_LAYERS)}")
    return WindowPlan(frames, size, overlap, fuse, loop, layers)


class Windowed:
    """``denoiser`` run window by window, outputs fused: a denoiser of the whole video, for the sampler.

    With one window of all frames in order it calls ``denoiser`` once on the input as it is, so the
    output equals plain sampling's exactly.
    """

    def __init__(self, denoiser, plan: WindowPlan) -> None:
        self.denoiser = denoiser
        self.plan = plan
        self.windows = plan.indices()
        self.weights = plan.weights()

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Cond | torch.Tensor) -> torch.Tensor:
        frames = x.shape[2]
        if frames != self.plan.frames:
            raise ValueError(f"the windows are for {self.plan.frames} frames, got {frames}")
        cond = as_cond(cond)
        if len(self.windows) == 1 and self.windows[0] == list(range(frames)):
            return self.denoiser(x, t, cond)
        out = None
        total = torch.zeros(frames, dtype=torch.float32, device=x.device)
        for frames_of, weights in zip(self.windows, self.weights):
            index = torch.tensor(frames_of, device=x.device)
            y = self.denoiser(x.index_select(2, index), t, cond.frames(index))
            w = weights.to(x.device)
            if out is None:
                out = torch.zeros((*y.shape[:2], frames, *y.shape[3:]), dtype=torch.float32, device=y.device)
            out.index_add_(2, index, y.float() * w.view(1, 1, -1, 1, 1))
            total.index_add_(0, index, w)
        return (out / total.view(1, 1, -1, 1, 1)).to(x.dtype)
