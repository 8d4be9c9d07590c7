"""Issue 16's proof on the built-in shapes model: a 64-frame video through windows, and prompt travel.

Slow (each render takes 30 s to 2 min on a shared 2-core CPU): run with ``pytest -m slow``.
"""

from __future__ import annotations

import numpy as np
import pytest
from long_checks import changes, objects_per_frame, seam_ratio, seam_steps, stretch_report

from videodiff.shapes.detect import objects_per_frame as one_object_each
from videodiff.shapes.evaluate import detect

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shapes():
    from videodiff import load_pipeline

    return load_pipeline(device="cpu")


def test_64_frames_of_a_circle_moving_right(shapes):
    """Model defaults (dpm++, 16 steps, guidance 3, prior 0.375 in pixels, 64x64), 0.6 px a frame: windows 16/4."""
    frames = shapes("a red circle moving right", num_frames=64, seed=1, motion=(0.6, 0)).frames
    plan = shapes.windows_for(shapes.settings("x", num_frames=64))
    assert (plan.window, plan.overlap, len(plan.indices())) == (16, 4, 5)
    whole = detect(frames)
    assert whole.present_fraction >= 0.95 and (whole.color, whole.shape) == ("red", "circle")
    assert objects_per_frame(frames).max() <= 1  # never twice in a frame
    # each 16-frame stretch moves right or, at 0.6 px a frame, stalls under the 10 px that reads as a direction
    # (28 of 32 stretches right over seeds 1-8, none the wrong way: README, Long videos)
    directions = [s["direction"] for s in stretch_report(frames)]
    assert set(directions) <= {"right", "none"} and directions.count("right") >= 3, directions
    assert whole.direction == "right"
    # seams: the change between consecutive frames across a window's edge is no larger than elsewhere on average.
    # (The stricter form, the largest seam change <= 1.5x the median elsewhere, is measured in the README:
    # it fails here, as the same statistic over non-seam steps does: the model's own frame-to-frame jitter.)
    d = changes(frames)
    seams = seam_steps(plan.indices())
    others = np.delete(d, seams)
    assert d[seams].mean() <= 1.5 * others.mean(), (seam_ratio(frames, plan.indices()), d.round(1))


def test_prompt_travel_from_red_to_blue(shapes):
    """Red held to frame 24, blue from 40: the change centred on frame 32. (Blending from frame 0 to 32 instead
    passes through other colours of this model's text space early on; see the README.) It failed at frames 0-8
    until the motion prior's track was kept in view: "a red circle" names no direction, and its predicted speed
    carried the prior's object out of the frame over 48 frames (README, Long videos)."""
    keys = {0: "a red circle", 24: "a red circle", 40: "a blue circle"}
    frames = shapes(None, prompt_at=keys, num_frames=48, seed=1).frames
    colours = [detect(frames[f : f + 1]).color for f in range(len(frames))]
    assert set(colours[:24]) == {"red"}, colours
    assert set(colours[41:]) == {"blue"}, colours


def loop_steps(frames) -> tuple[np.ndarray, float]:
    """Each frame-to-frame step of the object's centroid in a loop (frame 0 to 47 and the wrap, 47 to 0), and the
    issue's bar: twice the mean pace plus 2 px."""
    track = detect(frames).centroids
    steps = np.linalg.norm(np.diff(np.concatenate([track, track[:1]]), axis=0), axis=1)
    return steps, 2 * float(np.nanmean(steps)) + 2


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("prompt", ["a green square moving left", "a red circle moving up"])
def test_a_48_frame_loop_with_free_init_never_jumps(shapes, prompt, seed):
    """The README's loop (--frames 48 --loop --free-init 1): one object in every frame, no step (the wrap included)
    over twice the mean pace plus 2 px, and out the prompt's way first. Before: every seed jumped by 28-41 px."""
    frames = shapes(prompt, num_frames=48, loop=True, free_init=1, seed=seed).frames
    assert one_object_each(frames) == [1] * 48
    steps, bar = loop_steps(frames)
    assert steps.max() <= bar, (steps.round(1).tolist(), bar)
    half = detect(frames[:25]).direction
    assert half == prompt.split()[-1], half
