"""The post-processing stage: :class:`Clip`, the :class:`PostStep` protocol, the steps' order and the runner."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from videodiff.errors import UserError
from videodiff.post.interpolate import Interpolate
from videodiff.post.paste import Paste
from videodiff.settings.post import PostSettings

MODEL_ON_RENDERS_ONLY = (
    "--interpolate-method model: the video model renders the in-betweens on render commands only "
    "(render/img2vid/vid2vid, batches, the web app); for a video file use flow, blend, repeat or rife"
)


@dataclass(frozen=True)
class Clip:
    """Decoded frames on their way to the file: uint8 ``[f h w 3]``, their frame rate (``None``: whatever the
    writer is told), img2vid's pinned pictures ``{frame: uint8 [h w 3]}`` (fitted to the frames' size), and
    whether the clip is a closed loop (the sampler's ``loop``: its last frame leads back to its first)."""

    frames: np.ndarray
    fps: float | None = None
    pictures: Mapping[int, np.ndarray] = field(default_factory=dict)
    loop: bool = False

    def __post_init__(self) -> None:
        if self.frames.ndim != 4 or self.frames.shape[-1] != 3 or self.frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 [f h w 3], got {self.frames.dtype} {tuple(self.frames.shape)}")


class PostStep(Protocol):
    """One post-processing step."""

    name: str

    def __call__(self, clip: Clip) -> Clip:
        """The clip after this step (frames, fps and pictures as they now are)."""
        ...

    def record(self) -> dict[str, Any]:
        """What the sidecar records of this step (its settings; any model's source and SHA-256)."""
        ...


def steps_for(settings: PostSettings, clip: Clip) -> list[PostStep]:
    """The steps ``settings`` ask for, in their fixed order: paste first (it puts back the exact pictures the later
    steps then work from), then interpolation, then upscaling (interpolation works on the smaller frames). A step
    with nothing to work on (paste without pinned pictures, interpolation of one frame of a clip that is not a
    loop) is left out. ``interpolate_method="model"`` needs the pipeline
    (:func:`videodiff.pipeline.inbetweens.model_inbetweens`, which ``render()`` runs): refused."""
    settings.validate()
    if settings.interpolate and settings.interpolate_method == "model":
        raise UserError(MODEL_ON_RENDERS_ONLY)
    steps: list[PostStep] = []
    if settings.paste and clip.pictures:
        steps.append(Paste())
    if settings.interpolate and (clip.frames.shape[0] > 1 or clip.loop):
        method, model = settings.interpolate_method, settings.interpolate_model
        steps.append(Interpolate(settings.interpolate, method, model))
    if settings.upscale is not None or settings.upscale_factor is not None:
        from videodiff.post.upscale import Upscale  # only when asked: a render loads no upscaler code otherwise

        steps.append(Upscale(settings.upscale, settings.upscale_factor))
    return steps


def run_post(clip: Clip, steps: list[PostStep]) -> tuple[Clip, list[dict[str, Any]]]:
    """``clip`` through ``steps`` in order; returns the last clip and each step's record, ``{"step": name, ...}``."""
    records = []
    for step in steps:
        clip = step(clip)
        records.append({"step": step.name, **step.record(), "frames": int(clip.frames.shape[0]), "fps": clip.fps})
    return clip, records
