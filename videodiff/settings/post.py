"""What happens between decoding and writing (:class:`PostSettings`): the post-processing steps' settings."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from videodiff.errors import UserError
from videodiff.settings.checks import MAX_FPS, check_types
from videodiff.settings.fields import check_bounds, check_choices, setting
from videodiff.settings.sample import SampleSettings

# flow: OpenCV optical flow, warp and blend; blend: cross-fade; repeat: the earlier frame again (the floor)
INTERPOLATE_METHODS = ("flow", "blend", "repeat")
MAX_INTERPOLATE = 8
GIF_MAX_FPS = 50  # GIF delays are whole centiseconds and browsers slow any under 2 cs: 50 fps is the fastest
_LOOP = next(f for f in fields(SampleSettings) if f.name == "loop")


@dataclass(frozen=True, kw_only=True)
class PostSettings:
    """The post-processing stage (:mod:`videodiff.post`): which steps run on the decoded frames, with what settings."""

    paste: bool = setting(  # off: the decoded frame 0 is the model's own; on: exact, colours matched around it
        False, "Put the exact pictures into their frames and match the other frames' colours to them."
    )
    interpolate: int | None = setting(  # None: the frames as decoded
        None,
        f"Make N-1 frames between each pair of frames (and between the last and the first with --loop); the "
        f"frame rate is multiplied by N (2 to {MAX_INTERPOLATE}).",
        min=2,
        max=MAX_INTERPOLATE,
        must=f"a whole number from 2 to {MAX_INTERPOLATE}",
    )
    interpolate_method: str = setting(
        "flow",
        "How --interpolate makes frames: flow (optical flow, warped and blended), blend (cross-fade), repeat.",
        choices=INTERPOLATE_METHODS,
    )
    # the sampler's --loop (the same field in a RenderConfig): a closed loop is also interpolated across its seam
    loop: bool = setting(
        _LOOP.default,
        "A closed loop: the windows wrap around the end (seamless GIFs), and --interpolate also makes frames "
        "between the last frame and the first.",
    )

    def validate(self) -> PostSettings:
        """Raise :class:`UserError` (one line) for any of these settings that cannot work; return self.

        Called with a whole render's settings, the interpolated rate is also checked against its ``fps`` and
        ``output``: at most the writers' highest rate, and at most 50 fps for a GIF (:data:`GIF_MAX_FPS`)."""
        check_types(self, PostSettings)
        check_bounds(self, "interpolate")
        check_choices(self, "interpolate_method")
        check_rate(self.interpolate, getattr(self, "fps", None), getattr(self, "output", None))
        return self


def check_rate(factor: int | None, fps: float | None, output: str | None) -> None:
    """Refuse (one line) an interpolated rate ``fps * factor`` above what ``output`` plays at its written speed."""
    if not factor or fps is None:
        return
    rate = fps * factor
    gif = output is not None and Path(str(output)).suffix.lower() == ".gif"
    top = GIF_MAX_FPS if gif else MAX_FPS
    if rate > top:
        most = max(1, int(top // fps))
        kind = "a GIF plays at most" if gif else "videos are written at most at"
        advice = f"use --interpolate {most} or less" if most >= 2 else "lower --fps"
        raise UserError(
            f"--interpolate {factor} at {fps:g} fps makes {rate:g} fps, but {kind} {top:g} fps; {advice}"
            + (" or write .mp4/.webm" if gif else "")
        )
