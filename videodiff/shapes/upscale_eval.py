"""Upscaling against the shapes world's ground truth (``videodiff eval upscale``).

The world draws a clip from its random choices at any size (geometry scaled, edges by exact coverage), so the
same held-out clip drawn at ``size`` and at ``size * factor`` pixels is a small video and its true large one.
Each method makes the large frames from the small ones and is scored by PSNR against the true ones: Lanczos
(what ``--upscale-factor`` does without a model), bicubic and nearest as reference rows, and any upscaler model
files given. Clips are drawn without sensor noise: noise has no true large version.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from videodiff.post.upscale import Upscale, lanczos
from videodiff.shapes.detect import psnr
from videodiff.shapes.world import clip_rng, dataset_combos, draw_clip

__all__ = ["RESIZE_METHODS", "pairs", "run_upscale_eval"]

RESIZE_METHODS = ("lanczos", "bicubic", "nearest")


def pairs(count: int, *, seed: int = 0, size: int = 64, factor: int = 2, frames: int = 8) -> list[tuple[Any, Any]]:
    """``count`` held-out clips as (uint8 ``[f size size 3]``, the same clip's true ``[f size*factor ...]``)."""
    combos = dataset_combos(count, seed=seed, split="heldout")
    out = []
    for i, combo in enumerate(combos):
        small, big = (
            draw_clip(*combo, rng=clip_rng(seed, i), frames=frames, size=s, noise=False).frames
            for s in (size, size * factor)
        )
        out.append((small, big))
    return out


def _score(made: np.ndarray, true: np.ndarray, seconds: float) -> dict[str, float]:
    return {
        "psnr": float(np.mean([psnr(m, t) for m, t in zip(made, true, strict=True)])),
        "seconds_per_frame": seconds / made.shape[0],
    }


def run_upscale_eval(
    clips: int = 10, *, seed: int = 0, size: int = 64, factor: int = 2, models: tuple[str | Path, ...] = ()
) -> list[dict[str, Any]]:
    """Each method's mean PSNR (dB) against the true large frames and seconds per frame, over ``clips`` held-out
    clips, best PSNR first. ``models``: upscaler files, each run at ``factor`` (its output resized when its own
    scale differs)."""
    drawn = pairs(clips, seed=seed, size=size, factor=factor)
    rows = []
    for method in RESIZE_METHODS:
        scores = []
        for small, big in drawn:
            started = time.perf_counter()
            made = lanczos(small, big.shape[1:3], method)
            scores.append(_score(made, big, time.perf_counter() - started))
        rows.append({"method": method, **{k: float(np.mean([s[k] for s in scores])) for k in scores[0]}})
    for model in models:
        from videodiff.post.stage import Clip

        step = Upscale(str(model), float(factor))
        scores = []
        for small, big in drawn:
            started = time.perf_counter()
            made = step(Clip(small)).frames
            scores.append(_score(made, big, time.perf_counter() - started))
        name = f"model {Path(model).name}"
        rows.append({"method": name, **{k: float(np.mean([s[k] for s in scores])) for k in scores[0]}})
    return sorted(rows, key=lambda r: -r["psnr"])
