"""What a render is given besides settings (img2vid's pictures, vid2vid's clip), the conditioning stage's output,
and what a render returns: plain data, no model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from videodiff import sampling
from videodiff.config import IMG2VID_ANCHOR, InputSettings, parse_image_at, parse_rgb


@dataclass
class VideoResult:
    frames: np.ndarray | None  # uint8 [F, H, W, 3]; None for output_type="latent"
    latents: torch.Tensor  # final latents [1, C, F, h, w]
    seed: int | None
    settings: dict[str, Any] = field(default_factory=dict)  # what reproduces it (SampleSettings field names)
    triggered: tuple[str, ...] = ()  # trigger words of the MotionLoRAs merged for this prompt
    fps: float | None = None  # the frames' rate after post-processing (None: as the writer is told)
    post: list[dict[str, Any]] = field(default_factory=list)  # what each post-processing step did (the sidecar's)


@dataclass
class Conditioning:
    """What the conditioning stage gives the sampler: the conditioning object (text context ``[1 n d]`` or
    ``[1 f n d]`` with the negative one for guidance, and any other fields), and the MotionLoRAs' trigger words."""

    cond: sampling.Cond
    triggered: tuple[str, ...] = ()  # trigger words of the MotionLoRAs merged for this prompt

    @property
    def context(self) -> torch.Tensor:
        return self.cond.context

    @property
    def uncond(self) -> torch.Tensor | None:
        return self.cond.uncond

    @property
    def first(self) -> torch.Tensor:
        """The first frame's context ``[1 n d]`` (prompt travel's context is ``[1 f n d]``)."""
        return self.context[:, 0] if self.context.ndim == 4 else self.context

    def guide(self, scale: float, interval: tuple[float, float] | None = None) -> sampling.Guide:
        """Classifier-free guidance at ``scale`` (on the steps inside ``interval`` only, when given), else none."""
        return sampling.guide_for(scale, self.cond, interval=interval)


@dataclass
class ImageInput:
    """img2vid: pictures pinned to frames (a frame below 0 counts from the end), as paths, PIL images or arrays."""

    images: dict[int, Any]
    strength: float | None = None  # None: the motion prior's start when the model has one, else 0.85
    anchor: float = IMG2VID_ANCHOR  # fraction of the steps the pinned frames are held to their pictures
    fit: str = "crop"
    background: tuple[int, int, int] = (0, 0, 0)


@dataclass
class VideoInput:
    """vid2vid: a clip to re-render (a path PyAV reads, or frames ``[f h w 3]`` uint8), every ``stride``-th frame."""

    video: Any
    strength: float | None = None  # None: 0.6
    stride: int = 1
    fit: str = "crop"
    background: tuple[int, int, int] = (0, 0, 0)


def input_from(settings: InputSettings) -> ImageInput | VideoInput | None:
    """The pipeline's input for file-based settings (the CLI's, a sidecar's), or None for text-to-video."""
    settings.validate()
    background = parse_rgb(settings.background)
    if settings.image_at:
        images = dict(parse_image_at(spec) for spec in settings.image_at)
        return ImageInput(images, settings.strength, settings.anchor, settings.fit, background)
    if settings.video:
        return VideoInput(settings.video, settings.strength, settings.stride, settings.fit, background)
    return None


# The Python API's names (diffusers' where it has one) for SampleSettings fields.
CALL_NAMES = {
    "negative_prompt": "negative",
    "num_frames": "frames",
    "num_inference_steps": "steps",
    "guidance_scale": "guidance",
}


def read_source(source: VideoInput, frames: int, height: int, width: int) -> tuple[VideoInput, float]:
    """The clip's first ``frames`` frames (every ``stride``-th), fitted to the size as each is decoded (memory holds
    the frames at the output's size, not the file's); and its fps over the stride."""
    from videodiff.media.clips import read_video

    size = (height, width)
    clip, fps = read_video(
        source.video, frames=frames, stride=source.stride, size=size, fit=source.fit, background=source.background
    )
    return VideoInput(clip, source.strength, 1, source.fit, source.background), fps
