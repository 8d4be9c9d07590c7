"""The "shapes" world: 64x64, 16-frame clips of one coloured shape moving over a dark background.

Prompts follow one grammar, ``a {color} {shape} moving {direction}``, over 8 colours,
3 shapes and 4 directions: 96 combinations. Ten of them (:data:`HELDOUT`) never appear
in training data, so a model's compositional generalisation can be scored on them
separately (see :mod:`videodiff.shapes.evaluate`)::

    red circle left        green square right     blue triangle up
    yellow circle down     purple square left     orange triangle right
    white circle up        cyan square down       green triangle left
    blue circle right

Combination ``i`` (0..9) has shape ``i % 3`` and direction ``i % 4`` (so the ten
shape+direction pairs differ) and colour ``i`` (then green and blue again). Every colour,
shape and direction is held out at least once, so each word is tested in an unseen
combination, and still appears in training (86 combinations); no pair of words
(colour+shape, colour+direction, shape+direction) is held out twice, so every pair of
words also appears in training.

:func:`write_dataset` writes the layout ``videodiff train --data`` reads: ``00000.gif``
with its caption in ``00000.txt``, plus ``manifest.jsonl`` (also a valid ``--data``
manifest) listing each clip's colour, shape, direction, split and geometry. With ``maps``, each clip's
control maps beside it (``00000.maps.gif``: a white disc of :data:`~videodiff.control.maps.BLOB_RADIUS` on
the object's centre in each frame, what ``videodiff train --controlnet`` learns from); with ``draw``, clips
drawn otherwise (:func:`videodiff.shapes.blobs.along_training_path`: objects that follow drawn paths).

GIF is the default format because H.264's 4:2:0 chroma (half resolution: 32x32 for these
frames) smears colour across the object's edge, whatever the crf: measured on generated
clips, the largest channel error is ~24 levels on edge pixels and ~10 inside the object
for MP4 (crf 10 and even crf 0) against ~5 and ~2 for GIF (one global 256-colour palette,
no dithering), and ~2-3 on the background for both. The detector scores 100% either way.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from videodiff.errors import UserError
from videodiff.media.atomic import check_replaceable
from videodiff.media.gate import check_owned, read_receipt, remove_owned, write_receipt

__all__ = [
    "ALL_COMBOS",
    "COLORS",
    "DIRECTIONS",
    "FORMATS",
    "HELDOUT",
    "PALETTE",
    "SHAPES",
    "SPLITS",
    "TRAIN_COMBOS",
    "Clip",
    "combos_of",
    "draw_clip",
    "parse_prompt",
    "prompt_of",
    "render_clip",
    "split_of",
    "write_dataset",
]

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 70),
    "blue": (40, 90, 230),
    "yellow": (240, 220, 40),
    "purple": (160, 60, 210),
    "orange": (245, 140, 30),
    "white": (235, 235, 235),
    "cyan": (40, 210, 220),
}
COLORS: tuple[str, ...] = tuple(PALETTE)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")

Combo = tuple[str, str, str]  # (color, shape, direction)

ALL_COMBOS: tuple[Combo, ...] = tuple(itertools.product(COLORS, SHAPES, DIRECTIONS))
HELDOUT: frozenset[Combo] = frozenset(
    {
        ("red", "circle", "left"),
        ("green", "square", "right"),
        ("blue", "triangle", "up"),
        ("yellow", "circle", "down"),
        ("purple", "square", "left"),
        ("orange", "triangle", "right"),
        ("white", "circle", "up"),
        ("cyan", "square", "down"),
        ("green", "triangle", "left"),
        ("blue", "circle", "right"),
    }
)
TRAIN_COMBOS: tuple[Combo, ...] = tuple(c for c in ALL_COMBOS if c not in HELDOUT)
SPLITS = ("train", "heldout", "all")
FORMATS = ("mp4", "gif", "png")
DATA_KIND = "shapes dataset"  # the receipt a data folder carries (videodiff.media.gate)

# Geometry, in pixels of a 64x64 frame (scaled with ``size`` for other frame sizes).
OBJECT_SIZE = (10.0, 18.0)  # across: circle diameter, square side, triangle base and height
TRAVEL = (25.0, 45.0)  # centre displacement from the first to the last frame
MARGIN = 1.0  # the object stays this far inside the frame
BACKGROUND = (10.0, 40.0)  # grey level of the background
TINT = 4.0  # each channel of the background may differ from the grey by up to this
NOISE_SIGMA = (0.5, 3.0)  # per-pixel Gaussian noise
SUPERSAMPLE = 4  # samples per pixel along each axis (antialiasing by exact coverage)

_PROMPT_RE = re.compile(r"an? (\S+) (\S+) moving (\S+)")


def prompt_of(color: str, shape: str, direction: str) -> str:
    """``a {color} {shape} moving {direction}``."""
    return f"a {color} {shape} moving {direction}"


def parse_prompt(text: str) -> Combo:
    """``(color, shape, direction)`` of a prompt of the grammar (case and spacing are forgiven)."""
    words = " ".join(str(text).lower().replace(".", " ").split())
    m = _PROMPT_RE.fullmatch(words)
    grammar = (
        f"expected 'a {{color}} {{shape}} moving {{direction}}' with color one of {', '.join(COLORS)}; "
        f"shape one of {', '.join(SHAPES)}; direction one of {', '.join(DIRECTIONS)}"
    )
    if not m:
        raise UserError(f"prompt {text!r} is outside the shapes grammar: {grammar}")
    color, shape, direction = m.groups()
    for word, allowed in ((color, COLORS), (shape, SHAPES), (direction, DIRECTIONS)):
        if word not in allowed:
            raise UserError(f"prompt {text!r}: unknown word {word!r}; {grammar}")
    return color, shape, direction


def split_of(combo: Combo) -> str:
    """``"heldout"`` or ``"train"``."""
    return "heldout" if tuple(combo) in HELDOUT else "train"


def combos_of(split: str) -> tuple[Combo, ...]:
    """The combinations of ``split`` (train, heldout or all), in :data:`ALL_COMBOS` order."""
    if split == "train":
        return TRAIN_COMBOS
    if split == "heldout":
        return tuple(c for c in ALL_COMBOS if c in HELDOUT)
    if split == "all":
        return ALL_COMBOS
    raise UserError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")


@dataclass(frozen=True)
class Clip:
    """A rendered clip and its ground truth (positions in pixels, x right and y down, pixel i spans [i, i+1))."""

    frames: np.ndarray  # uint8 [F, H, W, 3]
    color: str
    shape: str
    direction: str
    centers: np.ndarray  # [F, 2] (x, y) of the bounding-box centre
    centroids: np.ndarray  # [F, 2] (x, y) of the area centroid (the triangle's lies size/6 below its centre)
    object_size: float  # across, in pixels
    travel: float  # centre displacement from the first to the last frame
    background: tuple[float, float, float]
    noise_sigma: float

    @property
    def prompt(self) -> str:
        return prompt_of(self.color, self.shape, self.direction)


def _coverage(shape: str, cx: np.ndarray, cy: np.ndarray, across: float, height: int, width: int) -> np.ndarray:
    """Fraction of each pixel inside the shape, ``[F, height, width]`` float32, from SUPERSAMPLE^2 samples.

    Only a window around the object is sampled (the object covers nothing outside it).
    """
    s, n = SUPERSAMPLE, cx.shape[0]
    win = int(math.ceil(across)) + 2
    x0 = np.clip(np.floor(cx - across / 2).astype(int) - 1, 0, max(width - win, 0))
    y0 = np.clip(np.floor(cy - across / 2).astype(int) - 1, 0, max(height - win, 0))
    wx, wy = min(win, width), min(win, height)
    offsets = (np.arange(s) + 0.5) / s
    sub_x = (np.arange(wx)[:, None] + offsets[None]).reshape(-1)  # [wx*s] inside the window
    sub_y = (np.arange(wy)[:, None] + offsets[None]).reshape(-1)
    dx = (x0[:, None] + sub_x[None] - cx[:, None])[:, None, :].astype(np.float32)  # [F, 1, wx*s]
    dy = (y0[:, None] + sub_y[None] - cy[:, None])[:, :, None].astype(np.float32)  # [F, wy*s, 1]
    half = np.float32(across / 2)
    if shape == "circle":
        inside = dx * dx + dy * dy <= half * half
    elif shape == "square":
        inside = (np.abs(dx) <= half) & (np.abs(dy) <= half)
    elif shape == "triangle":  # upright isosceles: apex at the top centre, base along the bottom
        below_apex = dy + half  # 0 at the apex, ``across`` at the base
        inside = (below_apex >= 0) & (dy <= half) & (np.abs(dx) <= below_apex / 2)
    else:
        raise UserError(f"unknown shape {shape!r}; choose one of: {', '.join(SHAPES)}")
    inside = np.broadcast_to(inside, (n, wy * s, wx * s))
    window = inside.reshape(n, wy, s, wx, s).mean(axis=(2, 4), dtype=np.float32)
    out = np.zeros((n, height, width), np.float32)
    for f in range(n):
        out[f, y0[f] : y0[f] + wy, x0[f] : x0[f] + wx] = window[f]
    return out


def draw_clip(
    color: str,
    shape: str,
    direction: str,
    *,
    rng: np.random.Generator,
    frames: int = 16,
    size: int = 64,
    noise: bool = True,
) -> Clip:
    """Render one clip of the shapes world with its ground truth (see :func:`render_clip`)."""
    if color not in PALETTE or shape not in SHAPES or direction not in DIRECTIONS:
        parse_prompt(prompt_of(color, shape, direction))  # raises the UserError naming the allowed words
    if frames < 2 or size < 16:
        raise ValueError(f"need at least 2 frames of at least 16x16 pixels, got {frames} of {size}x{size}")
    k = size / 64
    grey = rng.uniform(*BACKGROUND)
    background = np.clip(grey + rng.uniform(-TINT, TINT, 3), 0, 255)
    across = rng.uniform(*OBJECT_SIZE) * k
    lo, hi = across / 2 + MARGIN * k, size - across / 2 - MARGIN * k  # allowed centre positions
    travel = rng.uniform(TRAVEL[0] * k, min(TRAVEL[1] * k, hi - lo))
    start = rng.uniform(lo, hi - travel)
    across_pos = rng.uniform(lo, hi)
    sigma = rng.uniform(*NOISE_SIGMA) if noise else 0.0
    along = start + travel * np.arange(frames) / (frames - 1)
    if direction in ("left", "up"):  # moving towards smaller coordinates: mirror the track
        along = lo + hi - along
    fixed = np.full(frames, across_pos)
    cx, cy = (along, fixed) if direction in ("left", "right") else (fixed, along)
    alpha = _coverage(shape, cx, cy, across, size, size)[..., None]
    rgb = np.asarray(PALETTE[color], np.float32)
    out = background.astype(np.float32) + alpha * (rgb - background.astype(np.float32))
    if sigma:
        out = out + rng.normal(0.0, sigma, out.shape).astype(np.float32)
    pixels = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    centers = np.stack([cx, cy], axis=1)
    centroids = centers + ([0.0, across / 6] if shape == "triangle" else [0.0, 0.0])
    return Clip(
        pixels, color, shape, direction, centers, centroids, float(across), float(travel),
        tuple(float(v) for v in background), float(sigma),
    )  # fmt: skip


def render_clip(
    color: str,
    shape: str,
    direction: str,
    *,
    rng: np.random.Generator,
    frames: int = 16,
    size: int = 64,
    noise: bool = True,
) -> np.ndarray:
    """uint8 ``[frames, size, size, 3]``: one ``color`` ``shape`` moving ``direction`` at constant speed.

    Background: grey 10..40 with a tint of up to 4 per channel; the object is 10..18 px across,
    travels 25..45 px (less when a large object would leave the frame) and stays at least 1 px
    inside the frame, with no perpendicular jitter. Edges are antialiased by exact coverage
    (4x4 samples per pixel); Gaussian noise of sigma 0.5..3 is added unless ``noise=False``.
    Every random choice comes from ``rng``. :func:`draw_clip` returns the ground truth too.
    """
    return draw_clip(color, shape, direction, rng=rng, frames=frames, size=size, noise=noise).frames


def clip_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of clip ``index`` of a dataset with ``seed`` (independent of the clip count)."""
    return np.random.default_rng([int(seed), int(index)])


def dataset_combos(count: int, *, seed: int, split: str, shape: str | None = None) -> list[Combo]:
    """The combination of each clip: every combination of ``split`` (of one ``shape``, if given) once per cycle,
    in a seeded order per cycle."""
    if shape is not None and shape not in SHAPES:
        raise UserError(f"unknown shape {shape!r}; choose one of: {', '.join(SHAPES)}")
    pool = tuple(c for c in combos_of(split) if shape is None or c[1] == shape)
    out: list[Combo] = []
    cycle = 0
    while len(out) < count:
        order = np.random.default_rng([int(seed), 7919, cycle]).permutation(len(pool))
        out.extend(pool[i] for i in order)
        cycle += 1
    return out[:count]


def write_dataset(
    out: str | Path,
    count: int,
    *,
    seed: int = 0,
    split: str = "train",
    format: str = "gif",
    crf: int = 10,
    fps: float = 8,
    overwrite: bool = False,
    shape: str | None = None,
    maps: bool = False,
    draw: Callable[..., tuple[Clip, Any]] | None = None,
) -> list[Path]:
    """Write ``count`` clips of ``split`` (only ``shape``'s, if given) to ``out``; return the clip paths.

    ``out/00000.gif`` (or ``.mp4``, or a ``00000/`` folder of PNG frames) with the prompt
    in ``out/00000.txt``, and ``out/manifest.jsonl`` with one JSON object per clip (path,
    caption, color, shape, direction, split, seed, index, object_size, travel). Clip ``i``
    depends only on (seed, i), so a larger count extends a smaller one. GIF keeps the
    colours (see the module notes); MP4 (H.264 4:2:0 at ``crf``) is smaller but blurs colour
    edges; PNG folders are lossless but only the manifest points at them (``videodiff
    train`` reads video files). Frames are played at ``fps``.

    ``maps``: each clip's control maps too, ``out/00000.maps.gif`` (same format; the manifest's ``maps``): a white
    disc of radius :data:`~videodiff.control.maps.BLOB_RADIUS` centred on the object's centre in each frame, on
    black (:func:`~videodiff.control.maps.blob_maps`, the drawing ``--control-path`` uses). ``draw(color, shape,
    direction, rng)``: each clip and the path its object follows, recorded as the manifest's ``points`` (default:
    :func:`draw_clip`'s straight line, no path; :func:`videodiff.shapes.blobs.along_training_path`: a training
    path).
    """
    from videodiff.media.video import save_video  # imports PyAV lazily

    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise UserError(f"count must be a positive integer, got {count!r}")
    if format not in FORMATS:
        raise UserError(f"unknown format {format!r}; choose one of: {', '.join(FORMATS)}")
    combos = dataset_combos(count, seed=seed, split=split, shape=shape)  # checks split and shape
    folder = Path(out).expanduser()
    manifest = folder / "manifest.jsonl"
    digits = max(5, len(str(count - 1)))
    suffix = "" if format == "png" else f".{format}"
    names = [f"{i:0{digits}d}" for i in range(len(combos))]
    maps_names = [n + ".maps" + suffix for n in names] if maps else []
    # never a link, a file, a device; a folder with anything in it only with --overwrite and videodiff's receipt
    if check_replaceable(folder, file_ok=lambda p: False, folder_ok=lambda p: True, kind="data folder", shown=out):
        if any(folder.iterdir()):
            if not overwrite:
                raise UserError(f"{out} is not empty; choose a new folder or pass --overwrite")
            if read_receipt(folder, DATA_KIND) is None:
                raise UserError(
                    f"{out} is not empty and holds no receipt of a shapes dataset videodiff wrote; choose a new folder"
                )
            # every name this run writes must be free once videodiff's own files are gone: checked before any removal
            targets = ["manifest.jsonl", *(n + suffix for n in names), *(n + ".txt" for n in names), *maps_names]
            targets += [n.removesuffix(suffix) for n in maps_names if suffix]  # a maps folder in place of a GIF
            check_owned(folder, targets, DATA_KIND, what=" into this data folder")
            remove_owned(folder, DATA_KIND)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {out}: {exc.strerror or exc}") from None
    clip_paths, rows, written = [], [], []
    for i, (color, shape, direction) in enumerate(combos):
        clip, points = (draw or _straight)(color, shape, direction, clip_rng(seed, i))
        name = names[i]
        path = save_video(clip.frames, folder / f"{name}{suffix}", fps, crf=crf)
        (folder / f"{name}.txt").write_text(clip.prompt + "\n", encoding="utf-8")
        written += [path.name, f"{name}.txt"]
        extra: dict = {} if points is None else {"points": [[round(x, 3), round(y, 3)] for x, y in points]}
        if maps:
            from videodiff.control.maps import blob_maps

            blobs = blob_maps(clip.centers, *clip.frames.shape[1:3])
            # a GIF merges a frame equal to the one before (Pillow), and maps must keep one frame per frame
            repeats = format == "gif" and any(np.array_equal(a, b) for a, b in zip(blobs, blobs[1:]))
            name = maps_names[i].removesuffix(suffix) if repeats else maps_names[i]
            maps_path = _save_maps(blobs, folder / name, fps, crf)
            written.append(maps_path.name)
            extra["maps"] = maps_path.name
        clip_paths.append(path)
        rows.append(
            {
                "path": path.name,
                "caption": clip.prompt,
                "color": color,
                "shape": shape,
                "direction": direction,
                "split": split_of((color, shape, direction)),
                "seed": seed,
                "index": i,
                "object_size": round(clip.object_size, 3),
                "travel": round(clip.travel, 3),
                **extra,
            }
        )
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    write_receipt(folder, DATA_KIND, [*written, manifest.name])  # what a later --overwrite may remove
    return clip_paths


def _save_maps(blobs: np.ndarray, path: Path, fps: float, crf: int) -> Path:
    """Maps as a video, or (``NAME.maps``) a folder of PNG frames, written whole under a temporary name."""
    from videodiff.media.video import save_video

    if path.suffix != ".maps":
        return save_video(blobs, path, fps, crf=crf)
    from PIL import Image

    from videodiff.media.atomic import atomic_dir

    with atomic_dir(path) as tmp:
        for k, frame in enumerate(blobs):
            Image.fromarray(frame).save(tmp / f"{k:04d}.png")
    return path


def _straight(color: str, shape: str, direction: str, rng: np.random.Generator) -> tuple[Clip, None]:
    return draw_clip(color, shape, direction, rng=rng), None
