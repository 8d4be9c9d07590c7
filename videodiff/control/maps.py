"""Control maps: the pictures a ControlNet reads, one per frame, from a video, a folder of images or one image,
or computed here from them (Canny edges through OpenCV). Torch-free: uint8 ``[f h w 3]`` arrays out.

Frames are taken as vid2vid takes its clip: ``frames`` of them from the first, every ``stride``-th; a source with
fewer is refused, naming both counts. A folder's images are sorted by name (``0001.png``, ``0002.png``...); one
image (or a one-frame GIF) is every frame's map. Each map is fitted to the video's size as img2vid fits pictures
(``crop`` or ``pad``), then the detector, if any, runs on the fitted frame.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from videodiff.errors import UserError
from videodiff.media.images import IMAGE_FORMATS, check_image, file_sha256, fit_image, read_image
from videodiff.settings.control import PATH_SOURCE, Maps, parse_maps, parse_points
from videodiff.settings.fields import shown

__all__ = [
    "BLOB_RADIUS",
    "IMAGE_SUFFIXES",
    "blob_maps",
    "canny",
    "check_maps",
    "map_source",
    "path_maps",
    "path_positions",
    "read_maps",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")  # what a maps folder holds


def _folder_images(folder: Path) -> list[Path]:
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise UserError(f"--control folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return images


def _still_frames(path: Path) -> int | None:
    """1 for a picture file (a one-frame GIF too), its frame count for an animated GIF/WebP, None for a video."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path, formats=IMAGE_FORMATS) as image:
            return int(getattr(image, "n_frames", 1))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return None


def check_maps(spec: str | Maps, frames: int, stride: int = 1) -> None:
    """The maps' source exists, is pictures or a video, and holds ``frames`` frames at ``stride``; from headers,
    before any model loads. One-line :class:`UserError` otherwise."""
    maps = parse_maps(spec) if isinstance(spec, str) else spec
    if maps.detector == PATH_SOURCE:
        return  # drawn here, for any number of frames (parse_maps checked the points)
    path = Path(maps.path)
    if path.is_dir():
        available = len(_folder_images(path))
        for image in _folder_images(path)[: frames * stride : stride]:
            check_image(image)
        what = f"folder {path} holds {available} images"
    elif not path.exists():
        raise UserError(f"--control {shown(maps.path)}: no such file or folder")
    elif _still_frames(path) == 1:
        check_image(path)
        return
    else:
        from videodiff.media.clips import check_video

        available = check_video(path).num_frames
        what = f"video {path} has {available} frames"
    needed = (frames - 1) * stride + 1
    if available < needed:
        at = f" at --stride {stride}" if stride > 1 else ""
        raise UserError(f"--control {what}; the video needs {frames}{at} (the first {needed})")


def read_maps(
    spec: str | Maps,
    frames: int,
    height: int,
    width: int,
    *,
    stride: int = 1,
    fit: str = "crop",
) -> np.ndarray:
    """The control maps for a video of ``frames`` frames of ``height`` x ``width``: uint8 ``[frames h w 3]``."""
    maps = parse_maps(spec) if isinstance(spec, str) else spec
    if maps.detector == PATH_SOURCE:
        return path_maps(parse_points(maps.path), frames, height, width)
    check_maps(maps, frames, stride)
    path = Path(maps.path)
    side = max(height, width)
    if path.is_dir():
        files = _folder_images(path)[: (frames - 1) * stride + 1 : stride]
        pictures = [read_image(p, max_side=side) for p in files]
    elif _still_frames(path) == 1:
        pictures = [read_image(path, max_side=side)] * frames
    else:
        from videodiff.media.clips import read_video

        clip, _ = read_video(path, frames=frames, stride=stride)
        pictures = list(clip)
    fitted = [fit_image(p, height, width, fit=fit) for p in pictures]
    if maps.detector == "canny":
        fitted = [canny(p, *maps.thresholds) for p in fitted]
    return np.stack(fitted)


BLOB_RADIUS = 7 / 64  # of the short side: 7 px in the built-in world's 64, about its objects' size (10 to 18 across)


def path_positions(points, frames: int) -> np.ndarray:
    """``[frames 2]`` positions along the polyline ``points`` at constant speed, the first at the first point and the
    last at the last."""
    pts = np.asarray(points, dtype=np.float64)
    lengths = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    along = np.concatenate([[0.0], np.cumsum(lengths)])
    targets = np.linspace(0.0, along[-1], frames) if frames > 1 else np.zeros(1)
    return np.stack([np.interp(targets, along, pts[:, 0]), np.interp(targets, along, pts[:, 1])], axis=1)


def path_maps(points, frames: int, height: int, width: int, radius: float | None = None) -> np.ndarray:
    """uint8 ``[frames h w 3]``: a white disc on black moving along ``points`` (pixels, x right, y down) at constant
    speed; ``radius`` in pixels (default :data:`BLOB_RADIUS` of the short side). A disc outside the frame leaves it
    black."""
    return blob_maps(path_positions(points, frames), height, width, radius)


def blob_maps(positions, height: int, width: int, radius: float | None = None) -> np.ndarray:
    """uint8 ``[frames h w 3]``: a white disc on black centred on each frame's position (``[frames 2]``, pixels, x
    right, y down; pixel i spans [i, i+1)); ``radius`` as :func:`path_maps` takes it."""
    r = BLOB_RADIUS * min(height, width) if radius is None else radius
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    out = np.zeros((len(positions), height, width, 3), np.uint8)
    for i, (x, y) in enumerate(np.asarray(positions, np.float64)):
        out[i][(xs - x) ** 2 + (ys - y) ** 2 <= r * r] = 255
    return out


def canny(picture: np.ndarray, low: int, high: int) -> np.ndarray:
    """Canny edges of an RGB picture ``[h w 3]`` uint8 as a white-on-black ``[h w 3]`` map: OpenCV's ``Canny`` on
    the colour picture (as the canny ControlNets' own detector, lllyasviel's ``apply_canny``, runs it)."""
    try:
        import cv2
    except ImportError:
        raise UserError("--control canny: needs OpenCV (pip install opencv-python-headless)") from None
    edges = cv2.Canny(np.ascontiguousarray(picture), low, high)
    return np.repeat(edges[:, :, None], 3, axis=2)


def map_source(spec: str | Maps) -> dict[str, Any]:
    """What a sidecar records of one control's maps: the source's absolute path, the SHA-256 of each file read (a
    folder's by name) and the detector's parameters."""
    maps = parse_maps(spec) if isinstance(spec, str) else spec
    if maps.detector == PATH_SOURCE:
        return maps.record()
    path = Path(maps.path).resolve()
    record = {**maps.record(), "path": str(path)}
    if path.is_dir():
        record["sha256"] = {p.name: file_sha256(p) for p in _folder_images(path)}
    else:
        record["sha256"] = file_sha256(path)
    return record
