"""The shapes world along drawn paths: the object follows the path, the maps mark the same places."""

from __future__ import annotations

import numpy as np
import pytest

from videodiff.shapes.detect import detect
from videodiff.shapes.paths import HELDOUT_PATHS, draw_path_clip, heldout_path, net_direction, training_path
from videodiff.shapes.world import clip_rng


def _blob_centres(maps: np.ndarray) -> np.ndarray:
    out = []
    for frame in maps:
        ys, xs = np.nonzero(frame[:, :, 0])
        out.append((xs.mean() + 0.5, ys.mean() + 0.5) if len(xs) else (np.nan, np.nan))
    return np.array(out)


@pytest.mark.parametrize("seed", range(4))
def test_the_object_and_the_blob_follow_a_training_path(seed):
    rng = clip_rng(seed, 0)
    points = training_path(rng)
    clip, maps = draw_path_clip("red", "circle", points, rng=rng)
    seen = detect(clip.frames)
    assert seen.color == "red" and seen.present_fraction == 1.0
    assert np.nanmax(np.abs(seen.centroids - clip.centroids)) < 1.0
    assert np.nanmax(np.abs(_blob_centres(maps) - clip.centers)) < 1.0
    assert all(10 <= v <= 54 for p in points for v in p)
    assert clip.direction == net_direction(points)


@pytest.mark.parametrize("kind", sorted(HELDOUT_PATHS))
def test_heldout_paths_draw(kind):
    points = heldout_path(kind)
    clip, maps = draw_path_clip("blue", "square", points, rng=clip_rng(0, 1))
    blob = _blob_centres(maps)
    inside = ~np.isnan(blob[:, 0])
    whole = ((clip.centers >= 7) & (clip.centers <= 57)).all(axis=1)  # discs the edge does not cut
    assert np.abs(blob[whole] - clip.centers[whole]).max() < 1.0
    if kind == "leave and return":
        assert not inside.all() and inside[0] and inside[-1]
    else:
        assert inside.all()


def test_net_direction():
    assert net_direction([(0, 0), (10, 3)]) == "right"
    assert net_direction([(0, 0), (50, 0), (-10, 4)]) == "left"
    assert net_direction([(5, 5), (6, -20)]) == "up"
    assert net_direction([(5, 5), (6, 40)]) == "down"
