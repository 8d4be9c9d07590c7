"""Find the one object of a shapes-world clip and say what it is and how it moves (numpy only).

:func:`detect`: background = per-frame median
colour of the 2-pixel border; foreground = pixels farther than ``threshold`` (RGB distance)
from it; object = the largest 8-connected foreground component, present when its area is
plausible. Per present frame a soft coverage map (each pixel's colour projected on the
object-minus-background colour) gives area, centroid, soft width and height and the
vertical skewness; shape = a box in (fill ratio = area / (width x height), vertical
skewness) around square (1, 0), circle (pi/4, 0) or upright triangle (1/2, -0.57), else
``"other"``; majority over frames. Colour = nearest palette entry in CIELAB to the median
object colour (CIELAB, unlike RGB, keeps a darker or lighter rendering of a colour
nearest to it). Direction = the dominant axis and sign of the least-squares centroid
velocity over the clip, ``"none"`` below ``min_travel`` pixels. Frames of any size are
analysed at 64 pixels on the short side.

Also two measures of frames against frames: :func:`psnr` and :func:`seam`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from videodiff.shapes.world import COLORS, PALETTE

ANALYSIS_SIZE = 64  # short side the detector works at
THRESHOLD = 60.0  # RGB distance from the background that makes a pixel foreground
AREA_RANGE = (20.0, 900.0)  # plausible object area in pixels at 64x64 (spec: 50..324)
MIN_TRAVEL = 8.0  # pixels of centroid travel over the clip below which the direction is "none"
STABLE_AREA_RATIO = 1.5  # largest / smallest per-frame area of a stable object
STEADY_MIN_JUMP = 2.0  # pixels (64 px scale): a frame-to-frame step up to this is never a jump
STEADY_SPEED_FACTOR = 2.0  # a step longer than this many times the track's median step is a jump
# Shape boxes in (fill ratio, vertical skewness); ideal values: square (1, 0), circle (pi/4, 0),
# upright triangle (1/2, -0.566: its mass grows linearly towards the base).
SYMMETRIC_SKEW = 0.2  # circles and squares: |skew| at most this
CIRCLE_SQUARE_FILL = 0.89  # fill ratio from which a symmetric shape is a square (between pi/4 and 1)
MIN_CIRCLE_FILL = 0.68  # below this a symmetric shape is "other"
TRIANGLE_SKEW = -0.3  # upright triangles: skew at most this
TRIANGLE_FILL = (0.4, 0.8)
_BORDER = 2


# ----------------------------------------------------------------------------- colour


def srgb_to_lab(rgb: Any) -> np.ndarray:
    """CIELAB (D65) of sRGB values 0..255, shape ``[..., 3]``."""
    c = np.asarray(rgb, np.float64) / 255.0
    c = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = c @ m.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 216 / 24389, np.cbrt(xyz), (24389 / 27 * xyz + 16) / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


_PALETTE_LAB = srgb_to_lab([PALETTE[c] for c in COLORS])


def nearest_color(rgb: Any) -> tuple[str, float]:
    """The palette colour nearest to ``rgb`` in CIELAB, and its distance (Delta E 1976)."""
    d = np.linalg.norm(_PALETTE_LAB - srgb_to_lab(rgb), axis=-1)
    i = int(d.argmin())
    return COLORS[i], float(d[i])


# ----------------------------------------------------------------------------- detection


@dataclass
class Detection:
    """What :func:`detect` saw; positions in pixels of the input frames (x right, y down)."""

    color: str | None  # None when the object is never present
    shape: str | None  # circle, square, triangle, "other", or None
    direction: str  # left, right, up, down or "none"
    present_fraction: float
    centroids: np.ndarray  # [F, 2] (x, y), NaN where absent
    stable: bool  # present in every frame with a roughly constant area
    steady: bool = False  # present in every frame, and its centre never jumps (see :func:`is_steady`)
    areas: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))  # [F] pixels at 64 px scale, 0 absent
    color_rgb: tuple[float, float, float] | None = None  # median object colour
    color_distance: float | None = None  # Delta E to the chosen palette colour
    travel: float = 0.0  # fitted centroid travel over the clip along the dominant axis, 64 px scale
    shape_votes: dict[str, int] = field(default_factory=dict)
    largest_step: float | None = None  # longest frame-to-frame move of the centre, 64 px scale

    @property
    def present(self) -> bool:
        return self.present_fraction > 0

    def summary(self) -> dict[str, Any]:
        return {
            "color": self.color,
            "shape": self.shape,
            "direction": self.direction,
            "present_fraction": round(self.present_fraction, 4),
            "stable": self.stable,
            "steady": self.steady,
            "largest_step": None if self.largest_step is None else round(self.largest_step, 2),
            "travel": round(self.travel, 2),
            "color_distance": None if self.color_distance is None else round(self.color_distance, 2),
            "shape_votes": self.shape_votes,
        }


def as_frames(frames: Any) -> np.ndarray:
    if hasattr(frames, "detach") and hasattr(frames, "cpu"):  # a torch tensor, without importing torch
        frames = frames.detach().cpu().numpy()
    arr = np.asarray(frames)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8 or min(arr.shape[:3]) < 1:
        raise ValueError(f"frames must be uint8 [F, H, W, 3], got {arr.dtype} {list(arr.shape)}")
    return arr


def _resize(arr: np.ndarray) -> tuple[np.ndarray, float]:
    """Frames scaled so the short side is ANALYSIS_SIZE, and the factor back to input pixels."""
    _, h, w, _ = arr.shape
    if min(h, w) == ANALYSIS_SIZE:
        return arr, 1.0
    from PIL import Image

    k = ANALYSIS_SIZE / min(h, w)
    size = (max(1, round(w * k)), max(1, round(h * k)))
    method = Image.Resampling.BOX if k < 1 else Image.Resampling.BILINEAR
    return np.stack([np.asarray(Image.fromarray(f).resize(size, method)) for f in arr]), 1 / k


def _shift(a: np.ndarray, dy: int, dx: int, fill: Any) -> np.ndarray:
    """``a[:, y, x] <- a[:, y - dy, x - dx]``, with ``fill`` where that falls outside."""
    out = np.full_like(a, fill)
    _, h, w = a.shape
    out[:, max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = a[
        :, max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


_NEIGHBOURS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]


def label_components(mask: np.ndarray) -> np.ndarray:
    """8-connected components of each frame of a boolean ``[F, H, W]``: labels (a pixel index), -1 outside.

    Numpy only: every pixel takes the smallest label among its neighbours until nothing
    changes, with pointer jumping (a label is the index of a pixel of the same component
    with a label no larger) so that long components converge in few rounds.
    """
    n = mask.size
    big = np.int64(n)
    labels = np.where(mask, np.arange(n, dtype=np.int64).reshape(mask.shape), big)
    while True:
        low = labels
        for dy, dx in _NEIGHBOURS:
            low = np.minimum(low, _shift(labels, dy, dx, big))
        low = np.where(mask, low, big)
        flat = np.append(low.reshape(-1), big)
        for _ in range(4):  # pointer jumping
            low = np.where(mask, flat[low], big)
            flat = np.append(low.reshape(-1), big)
        if np.array_equal(low, labels):
            return np.where(mask, labels, -1)
        labels = low


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of each frame (all False where a frame has none)."""
    labels = label_components(mask)
    out = np.zeros_like(mask)
    for f in range(mask.shape[0]):
        lab = labels[f][labels[f] >= 0]
        if lab.size:
            values, counts = np.unique(lab, return_counts=True)
            out[f] = labels[f] == values[counts.argmax()]
    return out


def _frame_features(alpha: np.ndarray) -> tuple[float, float, float, float, float]:
    """(area, cx, cy, fill ratio, vertical skewness) of one soft coverage map ``[H, W]``."""
    area = float(alpha.sum())
    h, w = alpha.shape
    ys, xs = np.arange(h) + 0.5, np.arange(w) + 0.5
    col, row = alpha.sum(0), alpha.sum(1)
    cx, cy = float(col @ xs / area), float(row @ ys / area)
    width, height = float(alpha.max(0).sum()), float(alpha.max(1).sum())
    fill = area / max(width * height, 1e-6)
    var = float(row @ (ys - cy) ** 2 / area)
    skew = float(row @ (ys - cy) ** 3 / area) / max(var, 1e-6) ** 1.5
    return area, cx, cy, fill, skew


def classify_shape(fill: float, skew: float) -> str:
    """Shape of one frame from its fill ratio and vertical skewness, ``"other"`` outside every shape's box.

    Measured per frame on generated clips (also after an MP4 round trip at crf 10, whose
    4:2:0 chroma blurs the apex of triangles of little luma contrast: red, blue, purple): circle fill 0.76..0.82, square
    0.96..1.0, both with |skew| < 0.05; triangle fill 0.53..0.70 with skew -0.60..-0.45.
    """
    if abs(skew) <= SYMMETRIC_SKEW:
        if fill >= CIRCLE_SQUARE_FILL:
            return "square"
        if fill >= MIN_CIRCLE_FILL:
            return "circle"
    elif skew <= TRIANGLE_SKEW and TRIANGLE_FILL[0] <= fill <= TRIANGLE_FILL[1]:
        return "triangle"
    return "other"


def is_steady(centroids: Any) -> bool:
    """Whether a track ``[F, 2]`` (NaN where absent, pixels at the 64 px analysis scale) is steady.

    Steady: present in every frame, and no frame-to-frame step of the centre longer than
    ``max(STEADY_MIN_JUMP, STEADY_SPEED_FACTOR x the median step)``: an object that moves
    at any constant speed passes, one that teleports (or stands still, then leaps) fails.
    """
    track = np.asarray(centroids, np.float64)
    if track.ndim != 2 or track.shape[1] != 2:
        raise ValueError(f"centroids must be [F, 2], got {list(track.shape)}")
    if len(track) == 0 or np.isnan(track).any():
        return False
    steps = np.linalg.norm(np.diff(track, axis=0), axis=1)
    if steps.size == 0:
        return True
    limit = max(STEADY_MIN_JUMP, STEADY_SPEED_FACTOR * float(np.median(steps)))
    return bool(steps.max() <= limit)


def border_colour(x: np.ndarray) -> np.ndarray:
    """Each frame's background colour ``[F, 3]``: the median of its border (``_BORDER`` pixels) of ``[F, H, W, 3]``."""
    nf = x.shape[0]
    border = np.concatenate(
        [x[:, :_BORDER].reshape(nf, -1, 3), x[:, -_BORDER:].reshape(nf, -1, 3),
         x[:, :, :_BORDER].reshape(nf, -1, 3), x[:, :, -_BORDER:].reshape(nf, -1, 3)], axis=1,
    )  # fmt: skip
    return np.median(border, axis=1)


def detect(frames: Any, *, threshold: float = THRESHOLD, min_travel: float = MIN_TRAVEL) -> Detection:
    """Find the one object of a shapes clip (uint8 ``[F, H, W, 3]``): colour, shape, direction, presence."""
    arr = as_frames(frames)
    small, back = _resize(arr)
    x = small.astype(np.float32)
    nf, h, w, _ = x.shape
    bg = border_colour(x)  # [F, 3]
    diff = x - bg[:, None, None, :]
    dist = np.linalg.norm(diff, axis=-1)
    comp = _largest_component(dist > threshold)
    interior = comp.copy()
    for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
        interior &= _shift(comp, dy, dx, False)
    near = comp.copy()  # the component grown by one pixel: its antialiased rim
    for dy, dx in _NEIGHBOURS:
        near |= _shift(comp, dy, dx, False)

    areas = np.zeros(nf)
    centroids = np.full((nf, 2), np.nan)
    colours, votes = [], {}
    for f in range(nf):
        if not comp[f].any():
            continue
        core = interior[f] if interior[f].sum() >= 4 else comp[f]
        colour = np.median(x[f][core], axis=0)
        towards = colour - bg[f]  # coverage = each pixel's colour projected on background -> object colour
        alpha = np.where(near[f], np.clip(diff[f] @ towards / max(float(towards @ towards), 1e-6), 0, 1), 0)
        area, cx, cy, fill, skew = _frame_features(alpha)
        if not AREA_RANGE[0] <= area <= AREA_RANGE[1]:
            continue
        areas[f] = area
        centroids[f] = (cx, cy)
        colours.append(colour)
        shape = classify_shape(fill, skew)
        votes[shape] = votes.get(shape, 0) + 1

    present = areas > 0
    fraction = float(present.mean())
    if not present.any():
        return Detection(None, None, "none", 0.0, centroids * back, False, False, areas)
    color_rgb = np.median(np.stack(colours), axis=0)
    color, color_distance = nearest_color(color_rgb)
    shape = max(votes, key=lambda k: (votes[k], k != "other"))
    direction, travel = "none", 0.0
    t = np.flatnonzero(present)
    if t.size >= 2:
        slope = np.polyfit(t, centroids[t], 1)[0]  # [2]: pixels per frame in x and y
        moved = slope * (nf - 1)
        axis = int(np.abs(moved).argmax())
        travel = float(abs(moved[axis]))
        if travel >= min_travel:
            direction = (("left", "right"), ("up", "down"))[axis][int(moved[axis] > 0)]
    stable = bool(present.all() and areas.max() <= STABLE_AREA_RATIO * areas.min())
    steady = is_steady(centroids)  # at the 64 px analysis scale, whatever the frame size
    largest = float(np.linalg.norm(np.diff(centroids, axis=0), axis=1).max()) if present.all() and nf > 1 else None
    return Detection(
        color, shape, direction, fraction, centroids * back, stable, steady, areas,
        tuple(float(v) for v in color_rgb), color_distance, travel, votes, largest,
    )  # fmt: skip


def objects_per_frame(frames: Any, *, threshold: float = THRESHOLD, min_pixels: int = 12) -> list[int]:
    """How many separate objects each frame (uint8 ``[F, H, W, 3]``) shows: 8-connected blobs of at least
    ``min_pixels`` pixels (at the 64 px analysis scale) that differ from the frame's border colour by ``threshold``."""
    small, _ = _resize(as_frames(frames))
    x = small.astype(np.float32)
    labels = label_components(np.linalg.norm(x - border_colour(x)[:, None, None], axis=-1) > threshold)
    return [int((np.unique(lab[lab >= 0], return_counts=True)[1] >= min_pixels).sum()) for lab in labels]


def keyframe_track(frames: Any, first: Any, last: Any) -> dict[str, Any]:
    """Whether a video pinned to ``first`` and ``last`` (pictures, uint8 ``[H, W, 3]``) moves its object from one to
    the other: one object in every frame, each end within 4 px of its picture's object, and no frame-to-frame step
    longer than twice the even pace plus 2 px. Returns the measures and ``ok``."""
    found = detect(frames).centroids
    start, end = detect(np.asarray(first)[None]).centroids[0], detect(np.asarray(last)[None]).centroids[0]
    single = all(n == 1 for n in objects_per_frame(frames))
    errors = (float(np.hypot(*(found[0] - start))), float(np.hypot(*(found[-1] - end))))
    pace = float(np.hypot(*(end - start))) / max(len(found) - 1, 1)
    largest = float(np.nanmax(np.linalg.norm(np.diff(found, axis=0), axis=1))) if len(found) > 1 else 0.0
    ok = bool(single and not np.isnan(found).any() and max(errors) <= 4 and largest <= 2 * pace + 2)
    return {"ok": ok, "single": single, "end_errors": errors, "pace": pace, "largest_step": largest}


def psnr(a: Any, b: Any) -> float:
    """Peak signal-to-noise ratio of two uint8 images, in dB (inf when equal)."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def seam(frames: Any) -> float:
    """How much frame 0 jumps to frame 1, relative to the video's other steps: the mean absolute change from
    frame 0 to 1 over the median of the later consecutive changes (about 1 when frame 0 blends in)."""
    x = np.asarray(frames, np.float64)
    steps = np.abs(np.diff(x, axis=0)).mean(axis=(1, 2, 3))
    return float(steps[0] / max(np.median(steps[1:]), 1e-6))
