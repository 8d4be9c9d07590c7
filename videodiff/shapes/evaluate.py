"""Score videos of the shapes world with a detector that knows nothing of any model.

:func:`detect` finds the one object of a clip (numpy only): background = per-frame median
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

:func:`evaluate_model` scores any ``render_fn(prompt, seed) -> frames`` (the generator
itself, a VAE round trip, a model) into a :class:`Report` split into trained and held-out
combinations (see :data:`videodiff.shapes.HELDOUT`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from videodiff.shapes.world import (
    ALL_COMBOS,
    COLORS,
    DIRECTIONS,
    PALETTE,
    SHAPES,
    Combo,
    draw_clip,
    parse_prompt,
    prompt_of,
    split_of,
)

__all__ = [
    "Detection",
    "Report",
    "Scored",
    "detect",
    "evaluate",
    "evaluate_ground_truth",
    "evaluate_model",
    "ground_truth_render_fn",
    "is_steady",
    "model_render_fn",
    "roundtrip",
    "run_shapes_eval",
    "vae_roundtrip",
    "with_roundtrip",
]

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


def _as_frames(frames: Any) -> np.ndarray:
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


def detect(frames: Any, *, threshold: float = THRESHOLD, min_travel: float = MIN_TRAVEL) -> Detection:
    """Find the one object of a shapes clip (uint8 ``[F, H, W, 3]``): colour, shape, direction, presence."""
    arr = _as_frames(frames)
    small, back = _resize(arr)
    x = small.astype(np.float32)
    nf, h, w, _ = x.shape
    border = np.concatenate(
        [x[:, :_BORDER].reshape(nf, -1, 3), x[:, -_BORDER:].reshape(nf, -1, 3),
         x[:, :, :_BORDER].reshape(nf, -1, 3), x[:, :, -_BORDER:].reshape(nf, -1, 3)], axis=1,
    )  # fmt: skip
    bg = np.median(border, axis=1)  # [F, 3]
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


# ----------------------------------------------------------------------------- reports


@dataclass
class Scored:
    """One video: what it should show, what was detected."""

    prompt: str
    color: str
    shape: str
    direction: str
    split: str
    seed: int | None
    detection: Detection

    @property
    def correct(self) -> dict[str, bool]:
        d = self.detection
        return {
            "color": d.color == self.color,
            "shape": d.shape == self.shape,
            "direction": d.direction == self.direction,
        }


METRICS = ("color", "shape", "direction", "presence", "stable", "steady", "all")
_METRIC_HELP = {
    "color": "colour right",
    "shape": "shape right (voted over frames)",
    "direction": "direction right",
    "presence": "mean fraction of frames with the object",
    "stable": "present in every frame with constant size",
    "steady": "present in every frame, no jump of the centre above max(2 px, 2x its median step)",
    "all": "colour, shape and direction right and present in every frame",
}


def _metrics(items: Sequence[Scored]) -> dict[str, Any]:
    if not items:
        return {"n": 0, **{m: None for m in METRICS}}
    rows = [s.correct for s in items]
    out: dict[str, Any] = {"n": len(items)}
    for key in ("color", "shape", "direction"):
        out[key] = sum(r[key] for r in rows) / len(rows)
    out["presence"] = float(np.mean([s.detection.present_fraction for s in items]))
    out["stable"] = sum(s.detection.stable for s in items) / len(items)
    out["steady"] = sum(s.detection.steady for s in items) / len(items)
    out["all"] = sum(all(r.values()) and s.detection.present_fraction == 1 for r, s in zip(rows, items)) / len(items)
    return out


@dataclass
class Report:
    """Scores of a list of videos: overall, trained vs held-out combinations, per word, per combination."""

    items: list[Scored]
    label: str = ""
    seconds: float = 0.0

    def summary(self, split: str | None = None) -> dict[str, Any]:
        """Metrics over every video, or over one split (``train`` / ``heldout``)."""
        return _metrics([s for s in self.items if split is None or s.split == split])

    def per_word(self) -> dict[str, dict[str, Any]]:
        """Metrics of the videos whose prompt has each colour, shape and direction."""
        out = {}
        for key, words in (("color", COLORS), ("shape", SHAPES), ("direction", DIRECTIONS)):
            for word in words:
                chosen = [s for s in self.items if getattr(s, key) == word]
                if chosen:
                    out[word] = _metrics(chosen)
        return out

    def per_combo(self) -> dict[str, dict[str, Any]]:
        """Metrics per prompt (with its split), in the order of :data:`ALL_COMBOS`."""
        groups: dict[str, list[Scored]] = {}
        for s in self.items:
            groups.setdefault(s.prompt, []).append(s)
        order = {prompt_of(*c): i for i, c in enumerate(ALL_COMBOS)}
        return {p: {"split": g[0].split, **_metrics(g)} for p, g in sorted(groups.items(), key=lambda kv: order[kv[0]])}

    def confusion(self, key: str) -> dict[str, dict[str, int]]:
        """Counts of detected values per expected value of ``key`` (color, shape or direction)."""
        out: dict[str, dict[str, int]] = {}
        for s in self.items:
            got = str(getattr(s.detection, key) or "absent")
            row = out.setdefault(getattr(s, key), {})
            row[got] = row.get(got, 0) + 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "seconds": round(self.seconds, 3),
            "metrics": {m: _METRIC_HELP[m] for m in METRICS},
            "all": self.summary(),
            "train": self.summary("train"),
            "heldout": self.summary("heldout"),
            "per_word": self.per_word(),
            "per_combo": self.per_combo(),
            "confusion": {k: self.confusion(k) for k in ("color", "shape", "direction")},
            "videos": [
                {"prompt": s.prompt, "split": s.split, "seed": s.seed, **s.detection.summary()} for s in self.items
            ],
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def table(self, worst: int = 5) -> str:
        """A text table: splits, words, the held-out combinations and up to ``worst`` imperfect trained ones."""

        def pct(v: Any) -> str:
            return "    -" if v is None else f"{100 * v:5.1f}"

        def line(name: str, m: dict[str, Any]) -> str:
            return f"{name:<32} {m['n']:>5} " + " ".join(f"{pct(m[k]):>9}" for k in METRICS)

        head = f"{'':<32} {'n':>5} " + " ".join(f"{k:>9}" for k in METRICS)
        out = [f"{self.label or 'shapes report'} ({len(self.items)} videos, {self.seconds:.1f} s)", head]
        for split in (None, "train", "heldout"):
            out.append(line(split or "all", self.summary(split)))
        out.append("")
        out.extend(line(word, m) for word, m in self.per_word().items())
        combos = self.per_combo()
        held = {p: m for p, m in combos.items() if m["split"] == "heldout"}
        if held:
            out += ["", "held-out combinations:"]
            out.extend(line(p, m) for p, m in held.items())
        failing = [(p, m) for p, m in combos.items() if m["split"] == "train" and m["all"] < 1]
        if failing and worst:
            failing.sort(key=lambda kv: kv[1]["all"])
            out += ["", f"worst trained combinations ({min(worst, len(failing))} of {len(failing)} imperfect):"]
            out.extend(line(p, m) for p, m in failing[:worst])
        out.append("(percent; " + "; ".join(f"{k}: {v}" for k, v in _METRIC_HELP.items()) + ")")
        return "\n".join(out)


def evaluate(
    videos: Iterable[tuple[str, Any]], *, label: str = "", seeds: Iterable[int | None] | None = None
) -> Report:
    """Detect the object in each ``(prompt, frames)`` and score it against the prompt."""
    start = time.perf_counter()
    items = []
    seed_list = list(seeds) if seeds is not None else None
    for i, (prompt, frames) in enumerate(videos):
        color, shape, direction = parse_prompt(prompt)
        seed = seed_list[i] if seed_list is not None else None
        items.append(Scored(prompt, color, shape, direction, split_of((color, shape, direction)), seed, detect(frames)))
    return Report(items, label, time.perf_counter() - start)


RenderFn = Callable[[str, int], Any]


def evaluate_model(
    render_fn: RenderFn,
    seeds: Iterable[int],
    combos: Iterable[Combo] = ALL_COMBOS,
    *,
    label: str = "",
    progress: Callable[[int, int], None] | None = None,
) -> Report:
    """Score ``render_fn(prompt, seed) -> uint8 [F, H, W, 3]`` on every combination with every seed.

    The same code scores the generator (:func:`ground_truth_render_fn`), round trips
    through a codec or a VAE (wrap a render_fn, e.g. :func:`with_roundtrip`) and models.
    ``progress(done, total)`` is called after each video.
    """
    start = time.perf_counter()
    seeds, combos = [int(s) for s in seeds], list(combos)
    items, total = [], len(seeds) * len(combos)
    for combo in combos:
        prompt = prompt_of(*combo)
        for seed in seeds:
            detection = detect(render_fn(prompt, seed))
            items.append(Scored(prompt, *combo, split_of(combo), seed, detection))
            if progress:
                progress(len(items), total)
    return Report(items, label, time.perf_counter() - start)


def ground_truth_render_fn(seed: int = 0, *, noise: bool = True) -> RenderFn:
    """``render_fn`` drawing clips with the dataset generator; each (prompt, seed) gives its own clip."""

    def render(prompt: str, clip_seed: int) -> np.ndarray:
        combo = parse_prompt(prompt)
        rng = np.random.default_rng([int(seed), ALL_COMBOS.index(combo), int(clip_seed)])
        return draw_clip(*combo, rng=rng, noise=noise).frames

    return render


def roundtrip(frames: Any, suffix: str = ".gif", *, crf: int = 10, fps: float = 8) -> np.ndarray:
    """``frames`` written with :func:`videodiff.media.video.save_video` and read back with PyAV."""
    import tempfile

    import av

    from videodiff.media.video import save_video

    with tempfile.TemporaryDirectory(prefix="videodiff-roundtrip-") as tmp:
        path = save_video(frames, Path(tmp) / f"clip{suffix}", fps, crf=crf)
        # decodes every frame in order: what videodiff.media.clips.read_frames gives, without its seeking
        with av.open(str(path)) as container:
            return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def with_roundtrip(render_fn: RenderFn, suffix: str = ".gif", *, crf: int = 10) -> RenderFn:
    """``render_fn`` whose frames went through a file of type ``suffix`` (as the training data does)."""
    return lambda prompt, seed: roundtrip(render_fn(prompt, seed), suffix, crf=crf)


def evaluate_ground_truth(
    n_per_combo: int = 2,
    seed: int = 0,
    combos: Iterable[Combo] = ALL_COMBOS,
    *,
    roundtrip_suffix: str | None = None,
    crf: int = 10,
) -> Report:
    """The detector on freshly generated clips (optionally after a file round trip): its own error."""
    fn = ground_truth_render_fn(seed)
    label = "ground truth"
    if roundtrip_suffix:
        fn = with_roundtrip(fn, roundtrip_suffix, crf=crf)
        quality = f" (crf {crf})" if roundtrip_suffix in (".mp4", ".webm") else ""
        label += f" after {roundtrip_suffix.lstrip('.')} round trip{quality}"
    return evaluate_model(fn, range(n_per_combo), combos, label=label)


# What a model report records of the resolved render settings (not the prior's velocity: it follows the prompt).
RENDER_SETTINGS = (
    "frames",
    "steps",
    "guidance",
    "scheduler",
    "timestep_spacing",
    "guidance_interval",
    "noise",
    "noise_alpha",
    "motion_prior",
    "height",
    "width",
    "cache",
)


def model_render_fn(
    pipe: Any,
    *,
    steps: int | None = None,
    guidance: float | None = None,
    motion_prior: float | None = None,
    frames: int = 16,
    img2vid: dict[str, Any] | None = None,
    cache: int | None = None,
) -> tuple[RenderFn, dict[str, Any], list[dict[str, float]] | None]:
    """``render_fn`` of a loaded pipeline, the settings it renders with (filled in by its first render; settings
    left ``None`` are resolved by the pipeline: the model's recorded defaults), and ``None``.

    With ``img2vid`` (keywords of :meth:`VideoPipeline.img2vid`) each video animates the first frame of the
    ground-truth clip of its (prompt, seed) (a picture of the prompt's shape where it has room to move the asked
    way), and the third value is a list that collects, per video, frame 0's PSNR against the picture, the
    picture's own PSNR after the model's VAE (the best frame 0 can be without pasting) and the :func:`seam`.
    """
    settings: dict[str, Any] = {}
    fidelity: list[dict[str, float]] | None = None if img2vid is None else []
    truth = ground_truth_render_fn(0)
    given = dict(num_frames=frames, num_inference_steps=steps, guidance_scale=guidance, motion_prior=motion_prior)
    if cache is not None:  # feature caching (--cache N)
        given["cache"] = cache

    def render(prompt: str, seed: int) -> np.ndarray:
        if fidelity is None:
            result = pipe(prompt, seed=seed, **given)
        else:
            picture = truth(prompt, seed)[0]
            result = pipe.img2vid(picture, prompt, seed=seed, **given, **img2vid)
            vae_best = psnr(vae_roundtrip(pipe, picture[None])[0], picture)
            fidelity.append({"frame0": psnr(result.frames[0], picture), "vae": vae_best, "seam": seam(result.frames)})
        if not settings:
            settings.update({k: result.settings[k] for k in RENDER_SETTINGS})
            if fidelity is not None:
                settings.update({**img2vid, "strength": result.settings["strength"]})
        return result.frames

    return render, settings, fidelity


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


def fidelity_summary(fidelity: list[dict[str, float]]) -> dict[str, float]:
    """Frame 0 against the picture over a run: mean PSNRs and how often frame 0 is within 1 dB of the VAE's own."""
    frame0 = np.array([f["frame0"] for f in fidelity])
    vae_best = np.array([f["vae"] for f in fidelity])
    return {
        "frame0_psnr": round(float(np.mean(frame0)), 2),
        "vae_psnr": round(float(np.mean(vae_best)), 2),
        "within_1db": round(100 * float(np.mean(frame0 >= vae_best - 1)), 1),
        "seam": round(float(np.median([f["seam"] for f in fidelity])), 2),
        "videos": len(fidelity),
    }


def vae_roundtrip(pipe: Any, frames: Any) -> np.ndarray:
    """``frames`` (uint8 ``[F H W 3]``) encoded by ``pipe``'s VAE (posterior mean) and decoded again."""
    import torch

    from videodiff import vae

    pixels = torch.from_numpy(_as_frames(frames)).permute(3, 0, 1, 2)[None].float() / 127.5 - 1  # [1 3 F H W]
    latents = vae.encode(pipe.vae, pixels.to(pipe.device))
    return vae.to_uint8(vae.decode(pipe.vae, latents))[0]


def is_eval_report(path: Path) -> bool:
    """Whether ``path`` holds a report ``videodiff eval shapes --out`` wrote (what ``--overwrite`` may replace)."""
    try:
        if path.stat().st_size > 64 * 2**20:
            return False
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(report, dict) and isinstance(report.get("settings"), dict) and "seeds" in report["settings"]


def run_shapes_eval(
    *,
    model: str | None = None,
    motion_module: str | None = None,
    seeds: int = 2,
    combos: str = "all",
    ground_truth_only: bool = False,
    roundtrip_suffix: str | None = ".gif",
    device: str | None = "auto",
    dtype: str | None = "auto",
    steps: int | None = None,
    guidance: float | None = None,
    motion_prior: float | None = None,
    img2vid: dict[str, Any] | None = None,
    echo: Callable[[str], None] = print,
    cache: int | None = None,
) -> dict[str, Any]:
    """What ``videodiff eval shapes`` does, each report printed through ``echo``; returns JSON-ready results.

    1. The detector on generated ground-truth clips, raw and after a file round trip
       (``roundtrip_suffix``): its own error. 2. The same clips after the model's VAE
       (encode, decode): what the latent space can express at all. 3. The model's videos,
       from fixed seeds. ``model=None`` scores the built-in shapes model. ``img2vid`` (keywords of
       :meth:`VideoPipeline.img2vid`, e.g. ``{"strength": 0.85}``): the model animates each clip's first
       frame instead, and frame 0's fidelity to it is reported too (:func:`model_render_fn`).
    """
    from videodiff.errors import UserError
    from videodiff.log import notice
    from videodiff.shapes.world import combos_of

    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise UserError(f"--seeds must be a positive integer, got {seeds!r}")
    if cache is not None:  # before the ground truth is scored: a bad --cache fails at once
        from videodiff.config import SampleSettings

        SampleSettings(cache=cache).validate()
    chosen = combos_of(combos)
    held = [prompt_of(*c) for c in chosen if split_of(c) == "heldout"]
    results: dict[str, Any] = {"settings": {"seeds": list(range(seeds)), "combos": combos, "heldout": held}}
    reports = [("ground_truth", evaluate_ground_truth(seeds, 0, chosen))]
    if roundtrip_suffix:
        trip = evaluate_ground_truth(seeds, 0, chosen, roundtrip_suffix=roundtrip_suffix)
        reports.append(("ground_truth_roundtrip", trip))
    pipe = None
    if not ground_truth_only:
        from videodiff.pipelines import load_pipeline

        pipe = load_pipeline(model, motion_module, device=device, dtype=dtype)
        truth = ground_truth_render_fn(0)
        reports.append(
            (
                "ground_truth_vae",
                evaluate_model(
                    lambda prompt, seed: vae_roundtrip(pipe, truth(prompt, seed)),
                    range(seeds),
                    chosen,
                    label="ground truth after the model's VAE",
                ),
            )
        )
    for key, report in reports:
        results[key] = report.to_dict()
        echo(report.table() + "\n")
    if pipe is None:
        return results
    render_fn, settings, fidelity = model_render_fn(
        pipe, steps=steps, guidance=guidance, motion_prior=motion_prior, img2vid=img2vid, cache=cache
    )
    name = (model or "built-in shapes") + (" img2vid" if img2vid is not None else "")

    def progress(done: int, total: int) -> None:
        if done % 10 == 0 or done == total:
            notice(f"rendered {done}/{total} videos")

    report = evaluate_model(render_fn, range(seeds), chosen, label=f"model {name}", progress=progress)
    results["settings"]["model"] = {"model": name, "motion_module": motion_module, **settings}
    results["model"] = report.to_dict()
    echo(report.table())
    if fidelity is not None:
        results["frame0"] = summary = fidelity_summary(fidelity)
        echo(
            f"frame 0 against the picture: PSNR {summary['frame0_psnr']} dB (the picture after the VAE: "
            f"{summary['vae_psnr']} dB); within 1 dB of the VAE in {summary['within_1db']}% of "
            f"{summary['videos']} videos; frame 0 to 1 changes {summary['seam']}x the median step (median)"
        )
    return results
