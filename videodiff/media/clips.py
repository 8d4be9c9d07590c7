"""Reading clips from video files with PyAV: count frames, seek to a keyframe, decode forward.

A plain seek is not trusted: containers land on the keyframe at or before the target
(or, in broken files, after it), so frames are identified by their timestamps while
decoding forward, and a seek that overshoots falls back to decoding from the start.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from videodiff.errors import UserError
from videodiff.media.images import PIXEL_LIMIT, check_file, fit_image, read_image

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".gif")


# Frames given as arrays carry no rate: AnimateDiff's 8 fps (the render default); ``--fps`` overrides it.
ARRAY_FPS = 8.0


class UnreadableVideo(Exception):
    """The file cannot be decoded (corrupt, not a video, no video stream)."""


@dataclass(frozen=True)
class VideoInfo:
    num_frames: int
    fps: float
    width: int
    height: int
    pts: tuple[int, ...] | None  # presentation timestamps in frame order; None when the file has none


def _open(path: Path):
    import av

    try:
        container = av.open(str(path))
    except Exception as exc:  # noqa: BLE001 - every decoder failure means the same: unreadable
        raise UnreadableVideo(f"{path}: {type(exc).__name__}: {exc}") from None
    if not container.streams.video:
        container.close()
        raise UnreadableVideo(f"{path}: no video stream")
    return container


@contextmanager
def _decoding(path: Path) -> Iterator:
    """An open container; any decoder failure inside becomes :class:`UnreadableVideo`."""
    container = _open(path)
    try:
        yield container
    except UnreadableVideo:
        raise
    except Exception as exc:  # noqa: BLE001 - every decoder failure means the same: unreadable
        raise UnreadableVideo(f"{path}: {type(exc).__name__}: {exc}") from None
    finally:
        container.close()


# Declared sizes beyond these are refused before a frame is decoded: a 400-byte GIF can declare
# 6000x6000 frames and take gigabytes to decode.
MAX_VIDEO_SIDE = 8192
MAX_VIDEO_PIXELS = 4096 * 4096


def probe(path: str | Path) -> VideoInfo:
    """Frame count and timestamps by demuxing packets (no decoding), frame rate and size.

    Not a regular file (a FIFO would block), or frames declared larger than :data:`MAX_VIDEO_SIDE`:
    :class:`UnreadableVideo`, before anything is decoded.
    """
    path = Path(path)
    if not path.is_file():
        raise UnreadableVideo(f"{path}: not a regular file")
    with _decoding(path) as container:
        stream = container.streams.video[0]
        ctx = stream.codec_context
        _check_declared_size(path, ctx.width, ctx.height)
        packets = [(p.pts, p.duration) for p in container.demux(stream) if p.size]
        stamps: list[int | None] = [pts for pts, _ in packets]
        if not stamps or not ctx.width:
            raise UnreadableVideo(f"{path}: no frames")
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate or 25
        if container.format.name == "gif" and stream.time_base == Fraction(1, 100):
            rate = _gif_rate([d for _, d in packets]) or rate
        # packets come in decode order; sorting gives presentation order (B-frames)
        pts = tuple(sorted(stamps)) if None not in stamps and len(set(stamps)) == len(stamps) else None
        return VideoInfo(len(stamps), float(rate), ctx.width, ctx.height, pts)


def _gif_rate(delays_cs: list[int | None]) -> float | None:
    """The frame rate that GIF delays (whole centiseconds) were rounded from; None without usable delays.

    8 fps is 12.5 cs a frame, stored as 13, 12, 13, ...: the mean delay gives 8 fps where the
    container's guess says 8.33. A round rate (whole, then halves, then tenths) is taken when
    every frame's end time lies within half a centisecond of it, as a writer rounding
    ``i / fps`` would leave it; otherwise the mean delay's rate, unrounded.
    """
    if not delays_cs or any(not d or d < 0 for d in delays_cs):
        return None
    ends = np.cumsum(delays_cs)
    mean = len(delays_cs) * 100 / float(ends[-1])
    for step in (1, 2, 10):
        nice = round(mean * step) / step
        if nice > 0 and np.all(np.abs(100 * np.arange(1, len(ends) + 1) / nice - ends) <= 0.5 + 1e-9):
            return float(nice)
    return mean


def _check_declared_size(path: Path, width: int, height: int) -> None:
    if max(width, height) > MAX_VIDEO_SIDE or width * height > MAX_VIDEO_PIXELS:
        raise UnreadableVideo(
            f"{path}: declares {width}x{height} frames, larger than {MAX_VIDEO_SIDE} pixels a side or "
            f"{MAX_VIDEO_PIXELS // 2**20} megapixels (refused before decoding)"
        )


def read_frames(path: str | Path, indices: list[int], info: VideoInfo | None = None) -> np.ndarray:
    """Decode the frames at ``indices`` (0-based, in presentation order) to uint8 ``[n H W 3]`` RGB.

    With timestamps, seeks to the keyframe before the first wanted frame and decodes
    forward, naming frames by timestamp; otherwise decodes from the start, counting.
    """
    path = Path(path)
    if not indices:
        raise ValueError("no frame indices")
    info = info or probe(path)
    if max(indices) >= info.num_frames or min(indices) < 0:
        raise ValueError(f"frame indices {min(indices)}..{max(indices)} outside 0..{info.num_frames - 1}")
    with _decoding(path) as container:
        stream = container.streams.video[0]
        _check_declared_size(path, stream.codec_context.width, stream.codec_context.height)
        stream.thread_type = "AUTO"
        got = None
        if info.pts is not None:
            by_pts = {info.pts[i]: i for i in set(indices)}
            if min(indices) > 0:
                container.seek(info.pts[min(indices)], stream=stream, backward=True, any_frame=False)
                got = _collect(container.decode(stream), by_pts, lambda frame, n: frame.pts, after_seek=True)
            if got is None:  # no seek needed, or the seek landed late or on an undecodable keyframe
                container.seek(info.pts[0], stream=stream, backward=True, any_frame=False)
                got = _collect(container.decode(stream), by_pts, lambda frame, n: frame.pts)
        else:
            got = _collect(container.decode(stream), {i: i for i in set(indices)}, lambda frame, n: n)
    missing = [i for i in indices if got is None or i not in got]
    if missing:
        raise UnreadableVideo(f"{path}: could not decode frame(s) {missing[:5]}")
    return np.stack([got[i] for i in indices])


def _collect(frames, keys: dict, key_of, after_seek: bool = False) -> dict[int, np.ndarray] | None:
    """Decode forward, keeping frames whose key (pts or decode count) is wanted.

    After a seek, returns None when decoding started past the first wanted frame or
    produced a corrupt frame: some "keyframes" (recovery points, e.g. in the 4:4:4
    H.264 sample) cannot start decoding, which only decoding from the start fixes.
    """
    got: dict[int, np.ndarray] = {}
    first_wanted, last_wanted = min(keys), max(keys)
    for n, frame in enumerate(frames):
        if getattr(frame, "is_corrupt", False):
            if after_seek:
                return None
            raise UnreadableVideo("corrupt frame while decoding from the start")
        key = key_of(frame, n)
        if n == 0 and key is not None and key > first_wanted:
            return None
        if key in keys:
            got[keys[key]] = frame.to_ndarray(format="rgb24")
            if len(got) == len(keys):
                break
        elif key is not None and key > last_wanted:
            break
    return got


def fit_stride(available: int, frames: int, stride: int) -> int | None:
    """The largest stride <= ``stride`` that fits ``frames`` frames in ``available``; None when even 1 does not."""
    if available < frames:
        return None
    if frames == 1:
        return stride
    return max(1, min(stride, (available - 1) // (frames - 1)))


def read_video(
    source: str | Path | np.ndarray | list, *, frames: int | None = 16, stride: int = 1, start: int = 0
) -> tuple[np.ndarray, float]:
    """A clip as users have it -> (uint8 ``[n h w 3]`` RGB, frames per second after the stride).

    ``source``: a file PyAV reads (H.264 4:4:4, GIF, ...), a uint8 array ``[f h w 3]``, or a list of
    images (anything :func:`~videodiff.media.images.read_image` takes, all one size). Frames
    ``start, start + stride, ...``: ``frames`` of them, or all there are when the clip is shorter
    (``frames=None``: all). A file's frame size is checked against the pixel limit before decoding.
    Every failure is a one-line :class:`UserError` naming the file.
    """
    if (frames is not None and frames < 1) or stride < 1 or start < 0:
        raise UserError(f"need frames >= 1 (or all), stride >= 1 and start >= 0, got {frames}, {stride}, {start}")
    if isinstance(source, (np.ndarray, list, tuple)):
        clip = _stack(source)[start::stride][:frames]
        if not len(clip):
            raise UserError(f"no frames to read: the frames given end before frame {start}")
        return np.ascontiguousarray(clip), ARRAY_FPS / stride
    path = Path(source)
    info = check_video(path)
    try:
        indices = list(range(start, info.num_frames, stride))[:frames]
        if not indices:
            raise UserError(f"{path} has {info.num_frames} frames: none from frame {start} on")
        return read_frames(path, indices, info), info.fps / stride
    except UnreadableVideo as exc:
        raise UserError(f"cannot read video {' '.join(str(exc).split())}") from None


def check_video(path: str | Path) -> VideoInfo:
    """A video file's frame count, rate and size from its packets (no decoding), checked as :func:`read_video`
    checks them: one-line :class:`UserError` for a file that is missing, empty, not a video or too large."""
    path = check_file(path, "video")
    try:
        info = probe(path)
    except UnreadableVideo as exc:
        raise UserError(f"cannot read video {' '.join(str(exc).split())}") from None
    if info.width * info.height > PIXEL_LIMIT:
        size = f"{info.width}x{info.height}"
        raise UserError(f"{path}: {size} frames are larger than the limit of {PIXEL_LIMIT:,} pixels")
    return info


def check_moving_video(path: str | Path) -> VideoInfo:
    """:func:`check_video`, and a clip of at least two frames: a still picture (a PNG, JPEG or 1-frame GIF,
    which PyAV reads as a 1-frame video) is img2vid's input, refused here in one line."""
    info = check_video(path)
    if info.num_frames < 2:
        raise UserError(f"{path} is a still picture: animate it with videodiff img2vid")
    return info


def fit_video(
    frames: np.ndarray, height: int, width: int, *, fit: str = "crop", background: tuple[int, int, int] = (0, 0, 0)
) -> np.ndarray:
    """uint8 ``[f h w 3]`` -> ``[f height width 3]``, each frame fitted by :func:`~.images.fit_image`."""
    if frames.ndim != 4:
        raise ValueError(f"expected frames [f h w 3], got shape {frames.shape}")
    return np.stack([fit_image(frame, height, width, fit=fit, background=background) for frame in frames])


def _stack(source: np.ndarray | list | tuple) -> np.ndarray:
    """Frames given in memory -> uint8 ``[f h w 3]``."""
    if isinstance(source, np.ndarray):
        if source.ndim != 4:
            raise UserError(f"frames must be an array [f h w 3] (or a list of images), got shape {source.shape}")
        if source.dtype == np.uint8 and source.shape[3] == 3:
            return source
    if not len(source):
        raise UserError("no frames given")
    clip = [read_image(frame) for frame in source]
    if len({frame.shape for frame in clip}) > 1:
        raise UserError(f"the frames given differ in size: {sorted({frame.shape[:2] for frame in clip})}")
    return np.stack(clip)
