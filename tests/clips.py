"""Synthetic training clips for the training tests: tiny videos whose content is known pixel by pixel."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from videodiff.media.video import save_video


def moving_square(frames: int = 12, size: int = 32, square: int = 8, step: int = 2, phase: int = 0) -> np.ndarray:
    """uint8 ``[frames, size, size, 3]``: a red square on grey moving ``step`` pixels right per frame."""
    out = np.full((frames, size, size, 3), 96, np.uint8)
    top = (size - square) // 2
    for k in range(frames):
        left = (phase + k * step) % (size - square)
        out[k, top : top + square, left : left + square] = (230, 30, 30)
    return out


def column_clip(frames: int = 12, height: int = 32, width: int = 32, spacing: int = 2) -> np.ndarray:
    """uint8 ``[frames, height, width, 3]``: black, with a white column at ``x = spacing * k`` in frame ``k``."""
    out = np.zeros((frames, height, width, 3), np.uint8)
    for k in range(frames):
        out[k, :, spacing * k] = 255
    return out


def write_clip(path: str | Path, frames: np.ndarray, caption: str | None = None, fps: float = 8) -> Path:
    """Encode ``frames`` to ``path`` (.mp4/.gif), with a same-stem ``.txt`` caption when given."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_video(frames, path, fps=fps, overwrite=True)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption + "\n", encoding="utf-8")
    return path


def write_dataset(folder: str | Path, count: int = 3, frames: int = 12, size: int = 32) -> Path:
    """A folder of ``count`` moving-square mp4 clips with captions: the layout ``videodiff train --data`` reads."""
    folder = Path(folder)
    for i in range(count):
        write_clip(folder / f"clip{i}.mp4", moving_square(frames, size, phase=5 * i), "a red square moving right")
    return folder


def write_corrupt(path: str | Path, kind: str = "random", seed: int = 0) -> Path:
    """A file with a video extension that is not a video: ``random`` bytes, or ``text``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "random":
        path.write_bytes(np.random.default_rng(seed).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    else:
        path.write_text("this is not a video, only a text file renamed\n" * 20, encoding="utf-8")
    return path
