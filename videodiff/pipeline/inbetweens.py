"""In-betweens by the video model itself (``--interpolate-method model``).

The rendered frames are pinned as img2vid keyframes every ``N`` frames (:class:`~videodiff.pipeline.inputs.
ImageInput`, held through every step, :data:`~videodiff.settings.render.IMG2VID_ANCHOR`) and the same prompt,
seed and settings render ``(F - 1) * N + 1`` frames (``F * N`` with ``loop``, the windows wrapping to frame 0),
the model filling the frames between. The pinned pictures are then pasted back exactly
(:class:`~videodiff.post.paste.Paste`), so every rendered frame is kept at index ``i * N``, as the other methods
keep it. Frame-indexed settings move with their frames (``prompt_at`` keys times ``N``; a ``motion`` per frame
divided by ``N``); ControlNet maps and image prompts are not applied to the second pass (the pinned frames
already carry what they did).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from videodiff.pipeline.inputs import ImageInput, VideoResult
from videodiff.post.interpolate import frames_after
from videodiff.settings.post import PostSettings
from videodiff.settings.render import IMG2VID_ANCHOR
from videodiff.settings.sample import SampleSettings

__all__ = ["inbetween_settings", "model_inbetweens", "pinned_every"]


def inbetween_settings(settings: SampleSettings, factor: int) -> SampleSettings:
    """The second pass's settings: ``frames_after(frames, factor)`` frames, frame-indexed settings moved."""
    frames = frames_after(settings.frames, factor, loop=settings.loop)
    prompt_at = {k * factor: v for k, v in settings.prompt_at.items()} if settings.prompt_at else settings.prompt_at
    motion = tuple(m / factor for m in settings.motion) if settings.motion else settings.motion
    return replace(settings, frames=frames, prompt_at=prompt_at, motion=motion)


def pinned_every(frames: np.ndarray, factor: int) -> dict[int, np.ndarray]:
    """uint8 ``[f h w 3]`` frames as keyframes ``{i * factor: frame i}``."""
    if frames.ndim != 4 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [f h w 3], got {frames.dtype} {tuple(frames.shape)}")
    return {i * factor: frames[i] for i in range(frames.shape[0])}


def model_inbetweens(
    pipe: Any,
    settings: SampleSettings,
    first: VideoResult,
    factor: int,
    *,
    fps: float | None = None,
    progress: bool = False,
    on_step: Any = None,
) -> VideoResult:
    """``first``'s frames with ``factor - 1`` frames between each pair rendered by ``pipe`` (the same
    :class:`~videodiff.pipelines.VideoPipeline`); the result's ``post`` lists the first pass's steps, then this
    step, then the second pass's paste; its ``settings`` are the first pass's (what renders it again)."""
    if first.frames is None:
        raise ValueError("model in-betweens need the first pass's decoded frames")
    again = inbetween_settings(settings, factor)
    source = ImageInput(pinned_every(first.frames, factor), strength=1.0, anchor=IMG2VID_ANCHOR)
    rate = None if fps is None else fps * factor
    second = pipe.generate(
        again, source=source, progress=progress, on_step=on_step, post=PostSettings(paste=True), fps=rate
    )
    step = {
        "step": "interpolate",
        "factor": factor,
        "method": "model",
        "loop": settings.loop,
        "frames": int(second.frames.shape[0]),
        "fps": rate,
    }
    # the first pass's settings are what reproduces the video (its frame count, strength, seed)
    return replace(second, settings=first.settings, post=[*first.post, step, *second.post], fps=rate)
