"""Write generated clips to disk: H.264 ``.mp4``, VP9 ``.webm``, ``.gif``, or a PNG folder.

The format follows the path's suffix; a path without a suffix becomes a folder of
``0000.png, 0001.png, ...``. Every output is written to a temporary sibling first
and moved into place only when complete (see :mod:`videodiff.media.atomic`).
"""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from videodiff.errors import UserError
from videodiff.log import notice
from videodiff.media.atomic import check_replaceable, os_reason, prepare_output, staged
from videodiff.media.gate import folder_is_ours, write_receipt
from videodiff.settings.checks import MAX_FPS, MIN_FPS  # the rates --fps takes: every container stores them
from videodiff.settings.render import INFO_KEY, VIDEO_SUFFIXES  # the files a render writes, named once

__all__ = ["FRAMES_MARKER", "VIDEO_SUFFIXES", "check_sidecar", "save_video", "sidecar_path"]


# (codec, container format, largest crf the codec accepts)
_AV_CODECS = {".mp4": ("libx264", "mp4", 51), ".webm": ("libvpx-vp9", "webm", 63)}

# Pixels sampled (over all frames together) to build the one GIF palette; enough
# for a faithful colour distribution while keeping palette building well under 1 s.
_GIF_PALETTE_SAMPLES = 65536

# The receipt inside every PNG-frames folder videodiff writes (videodiff.media.gate): --overwrite may replace
# the folder only while it holds nothing but the frames the receipt lists, byte for byte; any other is the user's.
FRAMES_MARKER = ".videodiff-frames"
FRAMES_KIND = "png-frames"
_MAX_SIDECAR = 1 << 20  # a sidecar is a page of JSON

# How each output type starts (an empty file is replaceable too: it holds nothing to lose).
_MAGIC = {
    ".gif": lambda head: head.startswith(b"GIF8"),
    ".mp4": lambda head: head[4:8] == b"ftyp",
    ".webm": lambda head: head.startswith(b"\x1a\x45\xdf\xa3"),
}


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """The JSON metadata file that accompanies an output.

    ``out.mp4`` -> ``out.mp4.json``; a PNG folder ``frames`` -> ``frames.json``
    beside the folder.
    """
    p = Path(path)
    return p.with_name(p.name + ".json")


def _is_frames_folder(folder: Path) -> bool:
    """A folder videodiff wrote: its receipt and the frames it lists, unchanged, and nothing else."""
    return folder_is_ours(folder, FRAMES_KIND, marker=FRAMES_MARKER)


def is_sidecar(path: Path) -> bool:
    """A sidecar videodiff wrote: a JSON object with an ``info`` part naming the output (its own keys).

    Not "a file that starts with ``{``": a user's ``package.json`` beside ``-o package`` is not one.
    """
    try:
        if os.lstat(path).st_size > _MAX_SIDECAR:
            return False
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    info = data.get(INFO_KEY) if isinstance(data, dict) else None
    return isinstance(info, dict) and {"output", "created", "versions"} <= info.keys()


def _is_own_type(path: Path) -> bool:
    """A regular file whose contents are of its suffix's type (or empty): what --overwrite may replace."""
    looks = _MAGIC.get(path.suffix.lower())
    if looks is None:
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return False
    return not head or looks(head)


def check_sidecar(output: str | os.PathLike[str], *, overwrite: bool) -> Path:
    """The sidecar of ``output``: refused if it exists (without ``overwrite``) or is not a JSON file."""
    side = sidecar_path(output)
    if check_replaceable(side, file_ok=is_sidecar, kind="videodiff sidecar") and not overwrite:
        raise UserError(f"{side} already exists; pass --overwrite to replace it")
    return side


def check_output(
    path: str | os.PathLike[str], *, fps: float = 8, crf: int = 18, overwrite: bool = False, create: bool = True
) -> Path:
    """Everything :func:`save_video` would refuse, checked before any work: format, fps, crf, an existing file.

    Returns the output path, with its parent folder created (unless ``create=False``).
    """
    _fps_fraction(fps)
    suffix = Path(path).suffix.lower()
    if suffix and suffix not in VIDEO_SUFFIXES:
        raise UserError(
            f"unsupported output type {suffix!r}: use {' '.join(VIDEO_SUFFIXES)}, "
            "or no extension for a folder of PNG frames"
        )
    if suffix in _AV_CODECS:
        max_crf = _AV_CODECS[suffix][2]
        if isinstance(crf, bool) or not isinstance(crf, numbers.Integral) or not 0 <= crf <= max_crf:
            raise UserError(f"crf must be an integer from 0 to {max_crf} for {suffix}, got {crf!r}")
    if suffix:
        kind = f"{suffix} file"
        out = prepare_output(path, overwrite=overwrite, create=create, file_ok=_is_own_type, kind=kind)
    else:  # a folder of PNG frames: never a file, and only a folder videodiff wrote may be replaced
        kind = "PNG-frames folder"
        out = prepare_output(
            path, overwrite=overwrite, create=create, file_ok=lambda p: False, folder_ok=_is_frames_folder, kind=kind
        )
    return out


def save_video(
    frames: Any,
    path: str | os.PathLike[str],
    fps: float = 8,
    *,
    crf: int = 18,
    overwrite: bool = False,
    sidecar: str | None = None,
) -> Path:
    """Write ``frames`` (uint8 ``[F, H, W, 3]``) to ``path``; return the final path.

    ``frames`` may be a numpy array, a torch tensor or a list of ``H x W x 3``
    arrays. The format is chosen by the suffix: ``.mp4`` (H.264), ``.webm`` (VP9),
    ``.gif``, or no suffix for a folder of PNG frames. ``crf`` sets the quality of
    ``.mp4``/``.webm`` (lower is better). Raises :class:`UserError` for an
    unsupported suffix, a bad ``fps``/``crf``, an output that may not be written (see
    :func:`check_output`) or a write that fails (a full disk). ``sidecar``: the text of the JSON file
    beside the output (:func:`sidecar_path`), moved into place together with it (the sidecar first),
    so an output never appears without its sidecar.
    """
    arr = _as_frames(frames)
    out = check_output(path, fps=fps, crf=crf, overwrite=overwrite)
    if sidecar is not None:
        check_sidecar(out, overwrite=overwrite)
    suffix = out.suffix.lower()
    try:
        with staged(exclusive=not overwrite) as stage:
            if sidecar is not None:
                stage.file(sidecar_path(out)).write_text(sidecar, encoding="utf-8")
            if not suffix:
                _write_png_dir(arr, stage.dir(out))
            elif suffix == ".gif":
                _write_gif(arr, stage.file(out), fps)
            else:
                _write_av(_pad_even(arr), stage.file(out), suffix, fps, crf)
    except OSError as exc:  # a full disk, a folder removed under us: one line, nothing left behind
        raise UserError(f"cannot write {path}: {os_reason(exc)}") from None
    return out


def _as_frames(frames: Any) -> np.ndarray:
    """Return ``frames`` as a uint8 numpy array ``[F, H, W, 3]``; ValueError otherwise."""
    if hasattr(frames, "detach") and hasattr(frames, "cpu"):  # torch tensor, no torch import
        frames = frames.detach().cpu().numpy()
    elif isinstance(frames, (list, tuple)):
        if not frames:
            raise ValueError("frames is empty; need at least one frame")
        frames = np.stack([np.asarray(f) for f in frames])
    arr = np.asarray(frames)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"frames must have shape [F, H, W, 3], got {list(arr.shape)}")
    if arr.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {arr.dtype}")
    if arr.shape[0] < 1 or arr.shape[1] < 1 or arr.shape[2] < 1:
        raise ValueError(f"frames must hold at least one non-empty frame, got {list(arr.shape)}")
    return np.ascontiguousarray(arr)


def _iter_frames(arr: np.ndarray) -> Iterator[np.ndarray]:
    """Yield the frames one by one (a seam the tests use to fail an encode midway)."""
    yield from arr


def _pad_even(arr: np.ndarray) -> np.ndarray:
    """Pad odd widths/heights by one replicated pixel: 4:2:0 chroma needs even sizes."""
    _, h, w, _ = arr.shape
    ph, pw = h % 2, w % 2
    if not (ph or pw):
        return arr
    notice(f"frame size padded from {w}x{h} to {w + pw}x{h + ph} (4:2:0 video needs even sizes)")
    return np.pad(arr, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")


def _fps_fraction(fps: float) -> Fraction:
    """The rate as the containers store it: exact for rates like 7.5 or 12, 29.97 as 2997/100 (limit_denominator
    instead of a huge binary fraction that no time base holds). Refused in one line outside :data:`MIN_FPS` to
    :data:`MAX_FPS` (a clip's rate over a large stride can be far below): within them the fraction is never 0,
    a GIF delay never exceeds its 16 bits (0.1 fps is 1000 cs) and a time base never overflows."""
    if (
        isinstance(fps, bool)
        or not isinstance(fps, numbers.Real)
        or not (math.isfinite(fps) and MIN_FPS <= fps <= MAX_FPS)
    ):
        raise UserError(
            f"fps must be a number from {MIN_FPS:g} to {MAX_FPS:g} (what video files store; "
            f"videodiff.settings.checks.MIN_FPS, MAX_FPS), got {fps!r}"
        )
    exact = fps if isinstance(fps, Fraction) else Fraction(float(fps))  # float() for numpy scalars
    return exact.limit_denominator(1001)


def _write_av(arr: np.ndarray, tmp: Path, suffix: str, fps: float, crf: int) -> None:
    """Encode with PyAV: libx264 or libvpx-vp9, yuv420p, constant quality ``crf``."""
    import av  # imported lazily: PyAV is only needed for video files
    from av.video.reformatter import ColorRange, Colorspace

    codec, fmt, _ = _AV_CODECS[suffix]
    rate = _fps_fraction(fps)
    # faststart moves the index to the front so browsers can play before the download ends
    container_opts = {"movflags": "+faststart"} if fmt == "mp4" else {}
    with av.open(str(tmp), mode="w", format=fmt, options=container_opts) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height = arr.shape[2], arr.shape[1]
        stream.pix_fmt = "yuv420p"
        # libvpx only gives pure constant quality when the bit rate is 0 (otherwise crf
        # is a cap under a target rate); libx264 ignores "b" when crf is set.
        stream.options = {"crf": str(crf)} if codec == "libx264" else {"crf": str(crf), "b": "0"}
        # Convert with BT.709 and say so in the stream: untagged video is read as
        # BT.601 by some players and BT.709 by others, shifting colours.
        cc = stream.codec_context
        cc.colorspace = cc.color_primaries = cc.color_trc = 1  # AVCOL_*_BT709
        cc.color_range = 1  # MPEG (limited) range, what players expect from yuv420p
        for i, frame in enumerate(_iter_frames(arr)):
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(
                format="yuv420p", dst_colorspace=Colorspace.ITU709, dst_color_range=ColorRange.MPEG
            )
            vf.pts = i
            vf.time_base = 1 / rate
            container.mux(stream.encode(vf))
        container.mux(stream.encode())  # flush delayed frames


def _gif_palette(arr: np.ndarray) -> Image.Image:
    """One adaptive 256-colour palette for the whole clip (per-frame palettes flicker)."""
    f, h, w, _ = arr.shape
    picks = arr[np.unique(np.linspace(0, f - 1, min(f, 16)).round().astype(int))]
    # Subsample pixels on a regular grid so the palette cost does not grow with the size.
    step = max(1, math.ceil(math.sqrt(picks.shape[0] * h * w / _GIF_PALETTE_SAMPLES)))
    sample = np.ascontiguousarray(picks[:, ::step, ::step])
    mosaic = Image.fromarray(sample.reshape(-1, sample.shape[2], 3))
    # Median cut refined by a few k-means rounds: measurably closer colours than
    # median cut alone at a fraction of a second on the subsample.
    return mosaic.quantize(colors=256, method=Image.Quantize.MEDIANCUT, kmeans=3)


def gif_delays_cs(frames: int, fps: float) -> list[int]:
    """Per-frame GIF delays in centiseconds whose running sum stays within half a centisecond of ``i / fps``.

    GIF delays are whole centiseconds, so 8 fps (12.5 cs) alternates 13 and 12 instead of
    12 everywhere (8.33 fps). Browsers treat delays below 2 cs as 10 cs, so 2 cs (50 fps)
    is the shortest; the field is 16 bits, hence the upper clamp for absurdly slow rates.
    """
    rate = _fps_fraction(fps)
    ends = [math.floor(Fraction(100 * (i + 1)) / rate + Fraction(1, 2)) for i in range(frames)]
    delays = [b - a for a, b in zip([0, *ends], ends)]
    return [min(max(2, d), 65535) for d in delays]


def _write_gif(arr: np.ndarray, tmp: Path, fps: float) -> None:
    """Write a looping GIF with one global palette and full (non-delta) frames."""
    palette = _gif_palette(arr)
    delays_cs = gif_delays_cs(arr.shape[0], fps)
    # No dithering: a pixel that does not change maps to the same palette entry in
    # every frame, so static areas do not shimmer (error diffusion makes them crawl).
    indexed = (
        Image.fromarray(frame).quantize(palette=palette, dither=Image.Dither.NONE) for frame in _iter_frames(arr)
    )
    first = next(indexed)
    first.save(
        tmp,
        format="GIF",
        save_all=True,
        append_images=indexed,
        duration=[d * 10 for d in delays_cs],  # Pillow takes milliseconds, one per frame
        loop=0,  # forever
        # disposal 2 without transparency makes Pillow store every frame whole
        # instead of a cropped difference, so each frame decodes to the full image.
        disposal=2,
        optimize=False,
        palette=palette.getpalette(),  # the global colour table; no local tables
    )


def _write_png_dir(arr: np.ndarray, folder: Path) -> None:
    """Write ``0000.png, 0001.png, ...`` (more digits when there are over 10000 frames)."""
    digits = max(4, len(str(arr.shape[0] - 1)))
    names = []
    for i, frame in enumerate(_iter_frames(arr)):
        names.append(f"{i:0{digits}d}.png")
        Image.fromarray(frame).save(folder / names[-1], format="PNG")
    write_receipt(folder, FRAMES_KIND, names, marker=FRAMES_MARKER)
