"""Measurements of long shapes videos (issue 16's proof): presence, colour, shape, motion per stretch, seams."""

from __future__ import annotations

import numpy as np

from videodiff.shapes.evaluate import detect


def changes(frames: np.ndarray) -> np.ndarray:
    """Mean absolute change between consecutive frames ``[F-1]`` (0-255 scale)."""
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
    from videodiff.shapes.evaluate import label_components

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
