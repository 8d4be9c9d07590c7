"""Post-processing steps on any video file (``videodiff interpolate``): read, run the steps, write with a sidecar."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from videodiff.errors import UserError
from videodiff.post.stage import Clip, run_post, steps_for
from videodiff.settings.post import MAX_INTERPOLATE, PostSettings, check_rate
from videodiff.settings.render import INFO_KEY

__all__ = ["interpolate_video"]


def interpolate_video(
    video: str | Path,
    output: str | Path,
    factor: int | None,
    method: str = "flow",
    *,
    loop: bool = False,
    crf: int = 18,
    overwrite: bool = False,
) -> tuple[Path, Clip]:
    """``videodiff interpolate``: any video read (:func:`~videodiff.media.clips.read_video`), interpolated and
    written with a sidecar (:func:`~videodiff.media.video.save_video`). Everything that can be refused (the
    factor, the file, the rate, the output and its sidecar) is refused in one line before any frame is decoded."""
    from videodiff.media.clips import check_video, read_video
    from videodiff.media.images import file_sha256
    from videodiff.media.video import check_output, check_sidecar, save_video

    if factor is None:
        raise UserError(f"--interpolate N is needed: the frames to make per pair plus one (2 to {MAX_INTERPOLATE})")
    settings = PostSettings(interpolate=factor, interpolate_method=method, loop=loop).validate()
    info = check_video(video)
    check_rate(factor, info.fps, str(output))
    out = check_output(output, fps=info.fps * factor, crf=crf, overwrite=overwrite, create=False)
    check_sidecar(out, overwrite=overwrite)
    frames, fps = read_video(video, frames=None)
    clip = Clip(frames, fps)
    clip, records = run_post(clip, steps_for(settings, clip))
    record = {
        "video": str(Path(video).resolve()),
        **{k: getattr(settings, k) for k in ("interpolate", "interpolate_method", "loop")},
        "crf": crf,
        INFO_KEY: {
            "inputs": {str(Path(video).resolve()): file_sha256(video)},
            "fps_read": fps,
            "frames_read": int(frames.shape[0]),
            "frames_written": int(clip.frames.shape[0]),
            "fps_written": clip.fps,
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
