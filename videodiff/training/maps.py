"""Control maps beside training clips, for ``videodiff train --controlnet``: where they are, and their frames.

A clip's maps are a video or a folder of pictures (sorted by name, one a frame), of the clip's own frame size and
frame count (a map per frame: a count that differs means frames were merged or dropped, and would misalign). A
manifest names them in its ``maps`` column (relative to the manifest); in a folder of videos, ``NAME.maps.EXT`` (a
video) or ``NAME.maps/`` (pictures) beside ``NAME.EXT`` are that clip's maps (and not a clip of their own). The
frames a training clip takes (start, stride) are taken from its maps too, and both go through the same resize and
crop (:func:`videodiff.training.data.resize_crop`), so map and frame stay aligned.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from videodiff.errors import UserError
from videodiff.media.clips import VIDEO_EXTENSIONS, UnreadableVideo, probe, read_frames

__all__ = ["MAPS_INFIX", "UnreadableMaps", "check_maps_given", "maps_beside", "read_clip_maps"]

MAPS_INFIX = ".maps"  # NAME.maps.gif / NAME.maps/ beside NAME.gif


class UnreadableMaps(Exception):
    """A clip's maps cannot be read or do not fit its clip (the clip is skipped, as an unreadable video is)."""


def maps_beside(video: Path) -> Path | None:
    """``NAME.maps.EXT`` (a video, any extension) or ``NAME.maps/`` beside ``video`` (``NAME.EXT``), if present."""
    stem = video.name[: -len(video.suffix)] if video.suffix else video.name
    folder = video.with_name(stem + MAPS_INFIX)
    if folder.is_dir():
        return folder
    for ext in VIDEO_EXTENSIONS:
        candidate = video.with_name(stem + MAPS_INFIX + ext)
        if candidate.is_file():
            return candidate
    return None


def is_maps_video(path: Path, videos: set[Path]) -> bool:
    """Whether ``path`` is ``NAME.maps.EXT`` beside a video ``NAME.*`` of ``videos`` (then it is maps, not a clip)."""
    stem = path.name[: -len(path.suffix)]
    if not stem.endswith(MAPS_INFIX):
        return False
    base = stem[: -len(MAPS_INFIX)]
    return any(v.parent == path.parent and v.stem == base for v in videos)


def check_maps_given(sources) -> None:
    """Every clip names maps that exist (``--controlnet`` trains on them): one line naming the first clip without."""
    for source in sources:
        if source.maps is None:
            raise UserError(
                f"--controlnet needs control maps for every clip; {source.path} has none (a 'maps' column in the "
                f"manifest, or {source.path.stem}{MAPS_INFIX}{source.path.suffix} or {source.path.stem}{MAPS_INFIX}/ "
                "beside it)"
            )
        if not source.maps.exists():
            raise UserError(f"the maps of {source.path}: {source.maps}: no such file or folder")


def _pictures(folder: Path) -> list[Path]:
    from videodiff.control.maps import IMAGE_SUFFIXES

    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def read_clip_maps(maps: Path, indices: list[int], frames: int, size: tuple[int, int]) -> np.ndarray:
    """The maps of the frames ``indices`` of a clip of ``frames`` frames of ``size`` (width, height): uint8
    ``[n H W 3]``.

    Raises :class:`UnreadableMaps` (one line) when the maps are unreadable, of another count or of another size."""
    from videodiff.media.images import check_image, read_image

    try:
        if maps.is_dir():
            files = _pictures(maps)
            if len(files) != frames:
                raise UnreadableMaps(f"maps {maps} hold {len(files)} pictures, the clip has {frames} frames")
            for p in (files[i] for i in indices):
                found = check_image(p)
                if found != size:
                    raise UnreadableMaps(f"maps {p} are {found[0]}x{found[1]}, the clip {size[0]}x{size[1]}")
            frames = np.stack([read_image(files[i]) for i in indices])
        else:
            info = probe(maps)
            if info.num_frames != frames:
                raise UnreadableMaps(f"maps {maps} have {info.num_frames} frames, the clip {frames}")
            if (info.width, info.height) != size:
                raise UnreadableMaps(f"maps {maps} are {info.width}x{info.height}, the clip {size[0]}x{size[1]}")
            frames = read_frames(maps, indices, info)
    except (UnreadableVideo, UserError, OSError) as exc:
        raise UnreadableMaps(str(exc).splitlines()[0]) from None
    return frames
