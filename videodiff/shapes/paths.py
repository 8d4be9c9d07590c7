"""The shapes world along drawn paths: clips whose object follows a polyline, with the control maps of that path.

What a ControlNet for the built-in model learns from and is scored on (issue: a control a person can draw). A path is
a polyline in the frame's pixels (x right, y down); the object's centre moves along it at constant speed from the
first frame to the last (:func:`videodiff.control.maps.path_positions`), and the maps are a white disc at the same
places (:func:`videodiff.control.maps.path_maps`): any blob, not the object's silhouette, so that the prompt decides
colour and shape and the map decides where.

Training paths (:func:`training_path`) are random polylines of 2 to 4 points inside the frame. The held-out paths
(:data:`HELDOUT_PATHS`) are kinds never drawn for training: curves, zigzags, a stop, a reversal, and a path that
leaves the frame and comes back. A path's net direction (first point to last) names the prompt's direction.
"""

from __future__ import annotations

import math

import numpy as np

from videodiff.control.maps import path_maps, path_positions
from videodiff.shapes.world import BACKGROUND, NOISE_SIGMA, OBJECT_SIZE, PALETTE, TINT, Clip, _coverage

__all__ = ["HELDOUT_PATHS", "draw_path_clip", "heldout_path", "net_direction", "training_path"]


def net_direction(points) -> str:
    """``left``, ``right``, ``up`` or ``down``: the larger component of the path's net displacement."""
    (x0, y0), (x1, y1) = points[0], points[-1]
    dx, dy = x1 - x0, y1 - y0
    if abs(dx) >= abs(dy):
        return "right" if dx >= 0 else "left"
    return "down" if dy >= 0 else "up"


def training_path(rng: np.random.Generator, size: int = 64) -> tuple[tuple[float, float], ...]:
    """2 to 4 points inside the frame (at least 10 px from its edges at 64 px), the first two at least a sixth of the
    frame apart so that the object moves."""
    k = size / 64
    lo, hi = 10 * k, size - 10 * k
    while True:
        count = int(rng.integers(2, 5))
        points = rng.uniform(lo, hi, size=(count, 2))
        if np.linalg.norm(points[-1] - points[0]) >= size / 6:
            return tuple((float(x), float(y)) for x, y in points)


def _curve(size: int) -> tuple[tuple[float, float], ...]:
    """A quarter circle from the left edge's middle to the bottom's middle, as 9 points."""
    r = size * 0.4
    angles = np.linspace(math.pi, math.pi / 2, 9)
    return tuple((float(size / 2 + r * math.cos(a) + 0.1 * size), float(size * 0.1 + r * math.sin(a))) for a in angles)


def _scaled(points, size: int) -> tuple[tuple[float, float], ...]:
    return tuple((x * size / 64, y * size / 64) for x, y in points)


# kinds of path never drawn for training (64-px coordinates, scaled to the clip's size)
HELDOUT_PATHS = {
    "curve": None,  # _curve: a quarter circle
    "zigzag": ((8, 20), (22, 44), (36, 20), (50, 44)),
    "stop": ((10, 32), (32, 32), (32.01, 32), (32.02, 32), (54, 32)),  # half the time still in the middle
    "reversal": ((14, 40), (50, 40), (30, 40)),
    "leave and return": ((32, 20), (80, 20), (80, 44), (32, 44)),  # out of the right edge and back
}


def heldout_path(kind: str, size: int = 64) -> tuple[tuple[float, float], ...]:
    """The held-out path ``kind`` (a key of :data:`HELDOUT_PATHS`) at ``size`` pixels."""
    points = HELDOUT_PATHS[kind]
    return _curve(size) if points is None else _scaled(points, size)


def draw_path_clip(
    color: str,
    shape: str,
    points,
    *,
    rng: np.random.Generator,
    frames: int = 16,
    size: int = 64,
    noise: bool = True,
) -> tuple[Clip, np.ndarray]:
    """One clip of the shapes world whose object's centre follows ``points``, and its maps ``[F H W 3]`` uint8.

    Background, object size and noise are drawn as :func:`videodiff.shapes.world.draw_clip` draws them; the clip's
    ``direction`` is the path's net direction and ``travel`` its length.
    """
    k = size / 64
    grey = rng.uniform(*BACKGROUND)
    background = np.clip(grey + rng.uniform(-TINT, TINT, 3), 0, 255)
    across = rng.uniform(*OBJECT_SIZE) * k
    sigma = rng.uniform(*NOISE_SIGMA) if noise else 0.0
    centers = path_positions(points, frames)
    alpha = _coverage(shape, centers[:, 0], centers[:, 1], across, size, size)[..., None]
    rgb = np.asarray(PALETTE[color], np.float32)
    out = background.astype(np.float32) + alpha * (rgb - background.astype(np.float32))
    if sigma:
        out = out + rng.normal(0.0, sigma, out.shape).astype(np.float32)
    pixels = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    centroids = centers + ([0.0, across / 6] if shape == "triangle" else [0.0, 0.0])
    length = float(np.linalg.norm(np.diff(np.asarray(points, float), axis=0), axis=1).sum())
    clip = Clip(
        pixels, color, shape, net_direction(points), centers, centroids, float(across), length,
        tuple(float(v) for v in background), float(sigma),
    )  # fmt: skip
    return clip, path_maps(points, frames, size, size)
