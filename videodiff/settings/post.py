"""What happens between decoding and writing (:class:`PostSettings`): the post-processing steps' settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from videodiff.errors import UserError
from videodiff.settings.checks import MAX_FPS, check_types
from videodiff.settings.fields import check_bounds, check_choices, setting

# flow: OpenCV optical flow, warp and blend; blend: cross-fade; repeat: the earlier frame again (the floor);
# rife: a RIFE v4.x file (--interpolate-model); model: the video model renders the in-betweens (render commands)
INTERPOLATE_METHODS = ("flow", "blend", "repeat", "rife", "model")
RIFE_SUFFIXES = (".safetensors", ".pkl", ".pth", ".pt", ".ckpt")  # videodiff.post.rife reads these
MAX_INTERPOLATE = 8
MAX_UPSCALE = 8  # a 512-pixel render becomes 4096 pixels a side
GIF_MAX_FPS = 50  # GIF delays are whole centiseconds and browsers slow any under 2 cs: 50 fps is the fastest


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
        "How --interpolate makes frames: flow (optical flow, warped and blended), blend (cross-fade), repeat, "
        "rife (a RIFE v4.x file, --interpolate-model), model (the video model renders them; render commands).",
        choices=INTERPOLATE_METHODS,
    )
    interpolate_model: str | None = setting(  # None: no learned interpolator
        None, "The RIFE v4.x file (flownet.pkl or .safetensors) that --interpolate-method rife uses."
    )

    upscale: str | None = setting(  # None: Lanczos when --upscale-factor is given, else the frames as decoded
        None,
        "Upscale every frame with this model file (.safetensors/.pth: ESRGAN/RRDBNet or Real-ESRGAN Compact), "
        "after any interpolation; its scale unless --upscale-factor says otherwise.",
    )
    upscale_factor: float | None = setting(  # None: the model's scale (no model: no upscaling)
        None,
        f"Make frames S times larger (above 1, at most {MAX_UPSCALE}): with --upscale, the model then Lanczos to "
        "this size; alone, Lanczos.",
        min=1,
        min_open=True,
        max=MAX_UPSCALE,
        must=f"a number above 1 and at most {MAX_UPSCALE}",
    )

    def validate(self) -> PostSettings:
        """Raise :class:`UserError` (one line) for any of these settings that cannot work; return self.

        Called with a whole render's settings, the interpolated rate is also checked against its ``fps`` and
        ``output``: at most the writers' highest rate, and at most 50 fps for a GIF (:data:`GIF_MAX_FPS`)."""
        check_types(self, PostSettings)
        check_bounds(self, "interpolate")
        check_choices(self, "interpolate_method")
        check_model(self.interpolate_method, self.interpolate_model, self.interpolate)
        check_bounds(self, "upscale_factor")
        if self.upscale is not None and not (isinstance(self.upscale, str) and self.upscale.strip()):
            raise UserError("--upscale must name a model file (.safetensors, .pth or .pt)")
        check_rate(self.interpolate, getattr(self, "fps", None), getattr(self, "output", None))
        return self


def check_model(method: str, model: str | None, factor: int | None = 2) -> None:
    """Refuse (one line) ``rife`` without a model file (when there is a ``factor`` to interpolate by), a model
    with another method, or a file that is missing or of a type no RIFE release uses; what the file holds is
    checked when it loads (:mod:`videodiff.post.rife`)."""
    if method == "rife" and not model and factor:
        raise UserError(
            "--interpolate-method rife needs --interpolate-model FILE (a RIFE v4.x flownet.pkl or .safetensors)"
        )
    if model and method != "rife":
        raise UserError(f"--interpolate-model is read by --interpolate-method rife only, not {method}")
    if model:
        path = Path(str(model))
        if path.suffix.lower() not in RIFE_SUFFIXES:
            raise UserError(f"--interpolate-model {model}: a RIFE model is a {'/'.join(RIFE_SUFFIXES)} file")
        if not path.exists():
            raise UserError(f"--interpolate-model {model}: no such file")
        if not path.is_file():
            raise UserError(f"--interpolate-model {model}: not a regular file")


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
