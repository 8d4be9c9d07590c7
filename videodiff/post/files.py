"""Post-processing steps on any video file (``videodiff interpolate``): read, run the steps, write with a sidecar."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from videodiff.errors import UserError
from videodiff.post.stage import MODEL_ON_RENDERS_ONLY, Clip, run_post, steps_for
from videodiff.settings.post import GIF_MAX_FPS, MAX_INTERPOLATE, PostSettings, check_rate
from videodiff.settings.render import INFO_KEY, WriteSettings

__all__ = ["interpolate_video", "upscale_video"]


def interpolate_video(
    video: str | Path,
    output: str | Path,
    factor: int | None,
    method: str = "flow",
    *,
    loop: bool = False,
    model: str | None = None,
    fps: float | None = None,
    crf: int = 18,
    overwrite: bool = False,
) -> tuple[Path, Clip]:
    """``videodiff interpolate``: any video read (:func:`~videodiff.media.clips.read_video`), interpolated and
    written with a sidecar (:func:`~videodiff.media.video.save_video`). Everything that can be refused (the
    factor, the file, a RIFE ``model`` (loaded), the rate, the output and its sidecar) is refused in one line before
    any frame is decoded. ``fps``: the written rate (default: the video's times ``factor``)."""
    from videodiff.media.clips import check_video, read_video
    from videodiff.media.images import file_sha256
    from videodiff.media.video import check_output, check_sidecar, save_video

    if factor is None:
        raise UserError(f"--interpolate N is needed: the frames to make per pair plus one (2 to {MAX_INTERPOLATE})")
    settings = PostSettings(interpolate=factor, interpolate_method=method, interpolate_model=model)
    settings.validate()
    if method == "model":
        raise UserError(MODEL_ON_RENDERS_ONLY)
    if fps is not None:
        WriteSettings(fps=fps).validate()
    if method == "rife":
        from videodiff.post.rife import load_rife

        load_rife(str(model))  # a file that is not a RIFE network: refused before the video is read
    info = check_video(video)
    if fps is None:
        check_rate(factor, info.fps, str(output))
    elif fps > GIF_MAX_FPS and Path(str(output)).suffix.lower() == ".gif":
        raise UserError(f"--fps {fps:g}: a GIF plays at most {GIF_MAX_FPS} fps; lower --fps or write .mp4/.webm")
    out = check_output(output, fps=fps or info.fps * factor, crf=crf, overwrite=overwrite, create=False)
    check_sidecar(out, overwrite=overwrite)
    frames, fps_read = read_video(video, frames=None)
    clip = Clip(frames, fps_read, loop=loop)
    clip, records = run_post(clip, steps_for(settings, clip))
    if fps is not None:
        clip = replace(clip, fps=fps)
    record = {
        "video": str(Path(video).resolve()),
        **{k: getattr(settings, k) for k in ("interpolate", "interpolate_method", "interpolate_model")},
        "loop": loop,
        "fps": fps,
        "crf": crf,
        INFO_KEY: {
            "inputs": {str(Path(video).resolve()): file_sha256(video)},
            "fps_read": fps_read,
            "frames_read": int(frames.shape[0]),
            "frames_written": int(clip.frames.shape[0]),
            "fps_written": clip.fps,
            "post": records,
            "versions": _versions(),
            "created": datetime.now().isoformat(timespec="seconds"),
        },
    }
    sidecar = json.dumps(record, indent=2) + "\n"
    written = save_video(clip.frames, out, fps=clip.fps or fps_read, crf=crf, overwrite=overwrite, sidecar=sidecar)
    return written, clip


def upscale_video(
    video: str | Path,
    output: str | Path,
    model: str | None = None,
    factor: float | None = None,
    *,
    crf: int = 18,
    overwrite: bool = False,
) -> tuple[Path, Clip]:
    """``videodiff upscale``: any video read, every frame upscaled (:class:`~videodiff.post.upscale.Upscale`: the
    model, or Lanczos), written with a sidecar. The factor, the model file (names and shapes), the video's header,
    the output and its sidecar are refused in one line before any frame is decoded."""
    from videodiff.media.clips import check_video, read_video
    from videodiff.media.images import file_sha256
    from videodiff.media.video import check_output, check_sidecar, save_video
    from videodiff.post.upscale import check_size, check_upscaler

    if model is None and factor is None:
        raise UserError("--upscale MODEL_FILE or --upscale-factor S is needed (no model: Lanczos)")
    settings = PostSettings(upscale=model, upscale_factor=factor).validate()
    scale = check_upscaler(model).scale if model is not None else None
    info = check_video(video)
    check_size(info.num_frames, info.height, info.width, factor or scale)
    out = check_output(output, fps=info.fps, crf=crf, overwrite=overwrite, create=False)
    check_sidecar(out, overwrite=overwrite)
    frames, fps = read_video(video, frames=None)
    clip, records = run_post(Clip(frames, fps), steps_for(settings, Clip(frames, fps)))
    inputs = {str(Path(video).resolve()): file_sha256(video)}
    record = {
        "video": str(Path(video).resolve()),
        "upscale": str(Path(model).resolve()) if model is not None else None,
        "upscale_factor": factor,
        "crf": crf,
        INFO_KEY: {
            "inputs": inputs,
            "fps_read": fps,
            "frames_read": int(frames.shape[0]),
            "size_written": [int(clip.frames.shape[2]), int(clip.frames.shape[1])],
            "post": records,
            "versions": _versions(),
            "created": datetime.now().isoformat(timespec="seconds"),
        },
    }
    written = save_video(
        clip.frames, out, fps=clip.fps or fps, crf=crf, overwrite=overwrite, sidecar=json.dumps(record, indent=2) + "\n"
    )
    return written, clip


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("videodiff", "opencv-python-headless", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out
