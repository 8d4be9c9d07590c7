"""Frame interpolation against the shapes world's ground truth (``videodiff eval interp``).

Held-out clips of the world (:data:`~videodiff.shapes.world.HELDOUT` combinations, drawn with their true
positions) lose all frames but every ``factor``-th; each method of :mod:`videodiff.post.interpolate` makes them
back, and the made frames are scored against the dropped ones: PSNR, and the distance from the object's centroid
as :func:`~videodiff.shapes.detect.detect` finds it in the made frames to its true centroid (pixels).

Beside the weight-free methods: ``rife`` when a RIFE v4.x file is given, and ``model``, the video model's own
in-betweens (:mod:`videodiff.pipeline.inbetweens`): the kept frames pinned every ``factor`` frames and the model
(the built-in shapes model unless another is loaded) rendering the clip's prompt between them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from videodiff.post.interpolate import interpolate
from videodiff.shapes.detect import detect, psnr
from videodiff.shapes.world import Clip, clip_rng, dataset_combos, draw_clip

__all__ = ["WEIGHT_FREE", "heldout_clips", "run_interp_eval", "score_clip"]

WEIGHT_FREE = ("flow", "blend", "repeat")  # scored always; rife when a file is given


def heldout_clips(count: int, *, seed: int = 0, factor: int = 2, size: int = 64) -> list[Clip]:
    """``count`` held-out clips whose frame count keeps the last frame when every ``factor``-th is kept
    (``(16 // factor) * factor + 1`` frames: 17 for 2)."""
    frames = (16 // factor) * factor + 1
    combos = dataset_combos(count, seed=seed, split="heldout")
    return [draw_clip(*c, rng=clip_rng(seed, i), frames=frames, size=size) for i, c in enumerate(combos)]


Fill = Callable[[np.ndarray, str, int], np.ndarray]  # (kept frames, prompt, factor) -> all frames


def score_clip(
    clip: Clip, method: str, factor: int = 2, *, net: Any = None, fill: Fill | None = None
) -> dict[str, float]:
    """One clip with all frames but every ``factor``-th dropped and made back by ``method``: the mean PSNR (dB)
    and centroid error (pixels; NaN frames, where the object is not found, count as the frame's diagonal) over
    the dropped frames, and the seconds per made frame. ``net``: the loaded RIFE network (``rife``); ``fill``:
    what makes the frames for ``model`` (:func:`model_fill`)."""
    kept = clip.frames[::factor]
    started = time.perf_counter()
    made = fill(kept, clip.prompt, factor) if method == "model" and fill else interpolate(kept, factor, method, net=net)
    seconds = time.perf_counter() - started
    dropped = [i for i in range(made.shape[0]) if i % factor]
    found = detect(made).centroids[dropped]
    errors = np.linalg.norm(found - clip.centroids[dropped], axis=1)
    errors = np.where(np.isnan(errors), float(np.hypot(*clip.frames.shape[1:3])), errors)
    return {
        "psnr": float(np.mean([psnr(made[i], clip.frames[i]) for i in dropped])),
        "centroid_error": float(np.mean(errors)),
        "seconds_per_frame": seconds / len(dropped),
    }


def model_fill(pipe: Any, *, steps: int | None = None, seed: int = 0) -> Fill:
    """``fill`` for :func:`score_clip`: ``pipe`` renders the clip's prompt with the kept frames pinned every
    ``factor`` frames, as ``--interpolate-method model`` does after a render (the same pinning and paste)."""
    from videodiff.pipeline.inbetweens import pinned_every
    from videodiff.pipeline.inputs import ImageInput
    from videodiff.settings.post import PostSettings
    from videodiff.settings.render import IMG2VID_ANCHOR

    def fill(kept: np.ndarray, prompt: str, factor: int) -> np.ndarray:
        count, size = (kept.shape[0] - 1) * factor + 1, kept.shape[1]
        given = {"steps": steps} if steps else {}
        settings = pipe.settings(prompt, frames=count, height=size, width=size, seed=seed, **given)
        source = ImageInput(pinned_every(kept, factor), strength=1.0, anchor=IMG2VID_ANCHOR)
        return pipe.generate(settings, source=source, post=PostSettings(paste=True)).frames

    return fill


def run_interp_eval(
    clips: int = 10,
    *,
    seed: int = 0,
    factor: int = 2,
    size: int = 64,
    methods: tuple[str, ...] = WEIGHT_FREE,
    rife: str | None = None,
    fill: Fill | None = None,
) -> list[dict[str, Any]]:
    """Each method's scores (:func:`score_clip`) averaged over ``clips`` held-out clips, best PSNR first; with
    ``rife`` (a RIFE v4.x file) a ``rife`` row, with ``fill`` (:func:`model_fill`) a ``model`` row."""
    net = None
    if rife:
        from videodiff.post.rife import load_rife

        net, methods = load_rife(rife), (*methods, "rife")
    if fill:
        methods = (*methods, "model")
    drawn = heldout_clips(clips, seed=seed, factor=factor, size=size)
    rows = []
    for method in methods:
        scores = [score_clip(clip, method, factor, net=net, fill=fill) for clip in drawn]
        rows.append({"method": method, **{k: float(np.mean([s[k] for s in scores])) for k in scores[0]}})
    return sorted(rows, key=lambda r: -r["psnr"])
