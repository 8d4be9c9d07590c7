"""Long shapes videos: presence, colour, shape, motion per stretch and window seams (``videodiff eval long``).

The checks (:func:`changes`, :func:`seam_steps`, :func:`seam_ratio`, :func:`objects_per_frame`,
:func:`stretch_report`) are numpy on frames ``[f h w 3]`` uint8; :func:`run_long_eval` renders long videos
on the built-in model per setting and scores them, :func:`run_travel_eval` scores prompt travel from
"a red circle" to "a blue circle" (``videodiff eval travel``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from videodiff.shapes.detect import detect, label_components


def changes(frames: np.ndarray) -> np.ndarray:
    """Mean absolute change between consecutive frames ``[F-1]`` (0-255 scale) of frames ``[f h w 3]``."""
    x = frames.astype(np.float32)
    return np.abs(np.diff(x, axis=0)).mean(axis=(1, 2, 3))


def seam_steps(windows: list[list[int]]) -> list[int]:
    """Indices ``i`` of :func:`changes` (frame i to i+1) that cross a window's first or last frame."""
    seams = set()
    for w in windows:
        if w[0] > 0:
            seams.add(w[0] - 1)
        seams.add(w[-1])
    return sorted(s for s in seams if 0 <= s < max(max(w) for w in windows))


def seam_ratio(frames: np.ndarray, windows: list[list[int]]) -> float:
    """The largest change at a window seam over the median change elsewhere."""
    d = changes(frames)
    seams = [s for s in seam_steps(windows) if s < len(d)]
    others = np.delete(d, seams)
    return float(d[seams].max() / max(np.median(others), 1e-6))


def objects_per_frame(frames: np.ndarray, threshold: float = 60.0, min_area: int = 6) -> np.ndarray:
    """How many separate blobs of at least ``min_area`` pixels differ from the border's colour, per frame."""
    x = frames.astype(np.float32)
    counts = []
    for f in x:
        border = np.concatenate(
            [f[:2].reshape(-1, 3), f[-2:].reshape(-1, 3), f[:, :2].reshape(-1, 3), f[:, -2:].reshape(-1, 3)]
        )
        dist = np.linalg.norm(f - np.median(border, axis=0), axis=-1)
        labels = label_components((dist > threshold)[None])[0]
        _, sizes = np.unique(labels[labels >= 0], return_counts=True)
        counts.append(int((sizes >= min_area).sum()))
    return np.array(counts)


def stretch_report(frames: np.ndarray, length: int = 16) -> list[dict]:
    """:func:`detect` on each ``length``-frame stretch."""
    return [detect(frames[s : s + length]).summary() for s in range(0, len(frames) - length + 1, length)]


def run_long_eval(
    settings: Iterable[str],
    seeds: Iterable[int] = (1, 2, 3),
    frames: int = 64,
    prompt: str = "a red circle moving right",
    out: Path | None = None,
    echo: Callable[[str], Any] = print,
) -> list[dict]:
    """Flicker and seams of long videos per setting on the built-in model, one JSON line per video.

    Each setting is ``key=value[,key=value...]`` of render settings (``default``: the model's); videos of
    ``prompt`` with ``motion=(0.6, 0)``. Per video: flicker (mean absolute change between consecutive frames,
    0-255), the seam ratio (largest change at a window seam over the median elsewhere), the same statistic over
    the steps not at a seam (the model's own jitter), the mean change at seams over the mean elsewhere, presence,
    colour, shape, the most objects in one frame, the direction of each 16-frame stretch and the render time.
    ``out`` also gets the lines appended.
    """
    from videodiff.pipelines import load_pipeline

    pipe = load_pipeline(device="cpu")
    records = []
    for setting in settings:
        given = {}
        for pair in setting.split(",") if setting != "default" else []:
            key, value = pair.split("=", 1)
            given[key] = type(getattr(pipe.settings(prompt), key) or 0)(value) if value[0].isdigit() else value
        for seed in seeds:
            start = time.perf_counter()
            result = pipe(prompt, num_frames=frames, seed=seed, motion=(0.6, 0), **given)
            seconds = time.perf_counter() - start
            video = np.asarray(result.frames)
            plan = pipe.windows_for(pipe.settings(prompt, num_frames=frames, **given))
            windows = [list(w) for w in plan.indices()] if plan else [list(range(frames))]
            d = changes(video)
            seams = [i for i in seam_steps(windows) if i < len(d)] if len(windows) > 1 else []
            others = np.delete(d, seams)
            whole = detect(video)
            record = {
                "setting": setting,
                "seed": seed,
                "flicker": round(float(d.mean()), 2),
                "seam_ratio": round(seam_ratio(video, windows), 2) if seams else None,
                "jitter_ratio": round(float(others.max() / max(np.median(others), 1e-6)), 2),
                "seam_mean_ratio": round(float(d[seams].mean() / others.mean()), 2) if seams else None,
                "present": round(whole.present_fraction, 3),
                "color": whole.color,
                "shape": whole.shape,
                "most_objects": int(objects_per_frame(video).max()),
                "directions": [s["direction"] for s in stretch_report(video)],
                "render_s": round(seconds, 1),
            }
            echo(json.dumps(record))
            if out:
                with Path(out).open("a") as fh:
                    fh.write(json.dumps(record) + "\n")
            records.append(record)
    return records


TRAVEL_KEYS = {
    "centred": {0: "a red circle", 24: "a red circle", 40: "a blue circle"},
    "blend": {0: "a red circle", 32: "a blue circle"},
}
LETTER = {"red": "r", "blue": "b", "cyan": "c", "orange": "o", "yellow": "y", "purple": "p", "green": "g"}


def run_travel_eval(
    seeds: Iterable[int] = (1, 2, 3),
    keys: Iterable[str] = tuple(TRAVEL_KEYS),
    frames: int = 48,
    travel: str = "linear",
    echo: Callable[[str], Any] = print,
) -> list[dict]:
    """Prompt travel from "a red circle" to "a blue circle" on the built-in model, one JSON line per video.

    For each set of keyframes (``centred``: red held to frame 24 and blue from 40; ``blend``: red at 0, blue
    at 32) and seed: the colour :func:`detect` sees in each frame (r red, b blue, c cyan, o orange, y yellow,
    p purple, g green, - none) and whether the frames before 24 are all red and those after 40 all blue.
    """
    from videodiff.pipelines import load_pipeline

    pipe = load_pipeline(device="cpu")
    records = []
    for name in keys:
        for seed in seeds:
            video = pipe(None, prompt_at=TRAVEL_KEYS[name], num_frames=frames, seed=seed, travel=travel).frames
            colours = [detect(video[f : f + 1]).color for f in range(len(video))]
            record = {
                "keys": name,
                "seed": seed,
                "colours": "".join(LETTER.get(c, "-") for c in colours),
                "red_before_24": all(c == "red" for c in colours[:24]),
                "blue_after_40": all(c == "blue" for c in colours[41:]),
            }
            echo(json.dumps(record))
            records.append(record)
    return records
