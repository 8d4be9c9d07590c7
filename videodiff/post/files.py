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

__all__ = ["interpolate_video"]


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


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("videodiff", "opencv-python-headless", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out
