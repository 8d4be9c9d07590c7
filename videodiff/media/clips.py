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
from videodiff.media.budget import MAX_DECODE_PIXELS, MAX_VIDEO_FRAMES, MAX_VIDEO_SIDE, check_clip
from videodiff.media.images import check_file, fit_image, read_image

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
    except MemoryError:  # out of memory is not a broken file
        raise
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
    except (UnreadableVideo, UserError, MemoryError):  # out of memory is not a broken file
        raise
    except Exception as exc:  # noqa: BLE001 - every decoder failure means the same: unreadable
        raise UnreadableVideo(f"{path}: {type(exc).__name__}: {exc}") from None
    finally:
        container.close()


def probe(path: str | Path) -> VideoInfo:
    """Frame count and timestamps by demuxing packets (no decoding), frame rate and size.

    Not a regular file (a FIFO would block), frames declared larger than :data:`MAX_VIDEO_SIDE` a side or
    :data:`MAX_DECODE_PIXELS` (a 400-byte GIF can declare 6000x6000 frames), or more than
    :data:`MAX_VIDEO_FRAMES` frames: :class:`UnreadableVideo`, before a frame is decoded.
    """
    path = Path(path)
    if not path.is_file():
        raise UnreadableVideo(f"{path}: not a regular file")
    with _decoding(path) as container:
        stream = container.streams.video[0]
        ctx = stream.codec_context
        _check_declared_size(path, ctx.width, ctx.height)
        packets = []
        for packet in container.demux(stream):
            if packet.size:
                packets.append((packet.pts, packet.duration))
                if len(packets) > MAX_VIDEO_FRAMES:
                    raise UnreadableVideo(
                        f"{path}: more than {MAX_VIDEO_FRAMES:,} frames (videodiff.media.budget.MAX_VIDEO_FRAMES)"
                    )
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
    if max(width, height) > MAX_VIDEO_SIDE or width * height > MAX_DECODE_PIXELS:
        raise UnreadableVideo(
            f"{path}: declares {width}x{height} frames, larger than {MAX_VIDEO_SIDE} pixels a side or "
            f"{MAX_DECODE_PIXELS:,} pixels (videodiff.media.budget.MAX_VIDEO_SIDE, MAX_DECODE_PIXELS; "
            "refused before decoding)"
        )


def read_frames(
    path: str | Path,
    indices: list[int],
    info: VideoInfo | None = None,
    *,
    size: tuple[int, int] | None = None,
    fit: str = "crop",
    background: tuple[int, int, int] = (0, 0, 0),
) -> np.ndarray:
    """Decode the frames at ``indices`` (0-based, in presentation order) to uint8 ``[n H W 3]`` RGB.

    ``size``: (height, width) each frame is fitted to as it is decoded (:func:`~.images.fit_image` with ``fit``
    and ``background``), so that memory holds one frame at the file's size and the rest at this one.
    Budgeted before decoding (:func:`~.budget.check_clip`): the frames kept, and the frames decoded to reach
    them. With timestamps, seeks to the keyframe before the first wanted frame and decodes forward, naming
    frames by timestamp; otherwise decodes from the start, counting.
    """
    path = Path(path)
    if not indices:
        raise ValueError("no frame indices")
    info = info or probe(path)
    if max(indices) >= info.num_frames or min(indices) < 0:
        raise ValueError(f"frame indices {min(indices)}..{max(indices)} outside 0..{info.num_frames - 1}")
    decoded = max(indices) + 1 - (min(indices) if info.pts is not None else 0)
    kept = size or (info.height, info.width)
    check_clip(path, len(indices), kept, decoded=decoded, size=(info.width, info.height))
    out: np.ndarray | None = None
    places: dict[int, list[int]] = {}
    for k, i in enumerate(indices):
        places.setdefault(i, []).append(k)

    def store(i: int, frame) -> None:
        nonlocal out
        if size is None:
            rgb = frame.to_ndarray(format="rgb24")
        else:  # reduced by a whole factor while converting (area average), keeping twice the size: as load_image
            factor = max(1, min(frame.width, frame.height) // (2 * max(size)))
            width, height = -(-frame.width // factor), -(-frame.height // factor)
            rgb = frame.to_ndarray(width=width, height=height, format="rgb24", interpolation="AREA")
            rgb = fit_image(rgb, *size, fit=fit, background=background)
        if out is None:
            out = np.empty((len(indices), *rgb.shape), np.uint8)
        elif rgb.shape != out.shape[1:]:  # a stream whose frames change size midway
            raise UnreadableVideo(f"{path}: frames change size from {out.shape[2]}x{out.shape[1]}")
        out[places[i]] = rgb

    with _decoding(path) as container:
        stream = container.streams.video[0]
        _check_declared_size(path, stream.codec_context.width, stream.codec_context.height)
        stream.thread_type = "AUTO"
        got = None
        if info.pts is not None:
            by_pts = {info.pts[i]: i for i in places}
            if min(indices) > 0:
                container.seek(info.pts[min(indices)], stream=stream, backward=True, any_frame=False)
                got = _collect(container.decode(stream), by_pts, lambda f, n: f.pts, store, after_seek=True)
            if got is None:  # no seek needed, or the seek landed late or on an undecodable keyframe
                container.seek(info.pts[0], stream=stream, backward=True, any_frame=False)
                got = _collect(container.decode(stream), by_pts, lambda f, n: f.pts, store)
        else:
            got = _collect(container.decode(stream), {i: i for i in places}, lambda f, n: n, store)
    missing = [i for i in indices if got is None or i not in got]
    if missing or out is None:
        raise UnreadableVideo(f"{path}: could not decode frame(s) {missing[:5]}")
    return out


def _collect(frames, keys: dict, key_of, store, after_seek: bool = False) -> set[int] | None:
    """Decode forward, passing frames whose key (pts or decode count) is wanted to ``store(index, frame)``;
    the indices stored.

    After a seek, returns None when decoding started past the first wanted frame or
    produced a corrupt frame: some "keyframes" (recovery points, e.g. in the 4:4:4
    H.264 sample) cannot start decoding, which only decoding from the start fixes.
    """
    got: set[int] = set()
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
            store(keys[key], frame)
            got.add(keys[key])
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
    source: str | Path | np.ndarray | list,
    *,
    frames: int | None = 16,
    stride: int = 1,
    start: int = 0,
    size: tuple[int, int] | None = None,
    fit: str = "crop",
    background: tuple[int, int, int] = (0, 0, 0),
) -> tuple[np.ndarray, float]:
    """A clip as users have it -> (uint8 ``[n h w 3]`` RGB, frames per second after the stride).

    ``source``: a file PyAV reads (H.264 4:4:4, GIF, ...), a uint8 array ``[f h w 3]``, or a list of
    images (anything :func:`~videodiff.media.images.read_image` takes, all one size). Frames
    ``start, start + stride, ...``: ``frames`` of them, or all there are when the clip is shorter
    (``frames=None``: all); only these are kept, and no frame after the last of them is decoded.
    ``size``: (height, width) every frame is fitted to as it is read (:func:`~videodiff.media.images.fit_image`
    with ``fit`` and ``background``); ``n h w`` is then ``n height width``. A file's frame size and the
    frames it takes are checked against :mod:`~videodiff.media.budget` before decoding.
    Every failure is a one-line :class:`UserError` naming the file.
    """
    if (frames is not None and frames < 1) or stride < 1 or start < 0:
        raise UserError(f"need frames >= 1 (or all), stride >= 1 and start >= 0, got {frames}, {stride}, {start}")
    if isinstance(source, (np.ndarray, list, tuple)):
        clip = _stack(source, slice(start, None, stride), frames, size, fit, background)
        if not len(clip):
            raise UserError(f"no frames to read: the frames given end before frame {start}")
        return np.ascontiguousarray(clip), ARRAY_FPS / stride
    path = Path(source)
    info = check_video(path)
    indices = _taken(path, info, frames, stride, start)
    try:
        return read_frames(path, list(indices), info, size=size, fit=fit, background=background), info.fps / stride
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
    return info


def check_moving_video(
    path: str | Path, *, frames: int | None = None, stride: int = 1, size: tuple[int, int] | None = None
) -> VideoInfo:
    """:func:`check_video`, and a clip of at least two frames: a still picture (a PNG, JPEG or 1-frame GIF,
    which PyAV reads as a 1-frame video) is img2vid's input, refused here in one line. With ``frames``: the
    read :func:`read_video` would make of it (every ``stride``-th frame from the first, fitted to ``size``
    when known) checked against the budgets too, before anything is decoded."""
    info = check_video(path)
    if info.num_frames < 2:
        raise UserError(f"{path} is a still picture: animate it with videodiff img2vid")
    if frames is not None:
        indices = _taken(Path(path), info, frames, stride, 0)
        check_clip(path, len(indices), size, decoded=indices[-1] + 1, size=(info.width, info.height))
    return info


def _taken(path: Path, info: VideoInfo, frames: int | None, stride: int, start: int) -> range:
    """The frame indices :func:`read_video` takes; a one-line :class:`UserError` when there are none."""
    indices = range(start, info.num_frames, stride)[:frames]
    if not indices:
        raise UserError(f"{path} has {info.num_frames} frames: none from frame {start} on")
    return indices


def fit_video(
    frames: np.ndarray, height: int, width: int, *, fit: str = "crop", background: tuple[int, int, int] = (0, 0, 0)
) -> np.ndarray:
    """uint8 ``[f h w 3]`` -> ``[f height width 3]``, each frame fitted by :func:`~.images.fit_image`."""
    if frames.ndim != 4:
        raise ValueError(f"expected frames [f h w 3], got shape {frames.shape}")
    return np.stack([fit_image(frame, height, width, fit=fit, background=background) for frame in frames])


def _stack(
    source: np.ndarray | list | tuple,
    taken: slice,
    frames: int | None,
    size: tuple[int, int] | None,
    fit: str,
    background: tuple[int, int, int],
) -> np.ndarray:
    """Frames given in memory, the ``taken`` ones (at most ``frames``) -> uint8 ``[f h w 3]``, fitted to ``size``."""
    if isinstance(source, np.ndarray):
        if source.ndim != 4:
            raise UserError(f"frames must be an array [f h w 3] (or a list of images), got shape {source.shape}")
        if source.dtype == np.uint8 and source.shape[3] == 3:
            clip = source[taken][:frames]
            return clip if size is None else fit_video(clip, *size, fit=fit, background=background)
    if not len(source):
        raise UserError("no frames given")
    chosen = list(source)[taken][:frames]
    max_side = 2 * max(size) if size else None  # as load_image keeps it before the resize
    clip: list[np.ndarray] = []
    for frame in chosen:
        picture = read_image(frame, background=background, max_side=max_side)
        if size is not None:
            picture = fit_image(picture, *size, fit=fit, background=background)
        if not clip:  # the frames kept, budgeted from the first
            check_clip("the frames given", len(chosen), picture.shape[:2], decoded=0, size=(0, 0))
        clip.append(picture)
    if len({frame.shape for frame in clip}) > 1:
        raise UserError(f"the frames given differ in size: {sorted({frame.shape[:2] for frame in clip})}")
    return np.stack(clip) if clip else np.zeros((0, 1, 1, 3), np.uint8)
