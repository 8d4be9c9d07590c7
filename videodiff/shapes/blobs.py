"""Training data for a blob ControlNet: shapes-world clips whose objects follow drawn paths.

:func:`along_training_path` is a ``draw`` for :func:`videodiff.shapes.world.write_dataset` (``videodiff data shapes
--paths``): the clip's object follows a random training path (:func:`videodiff.shapes.paths.training_path`, 2 to 4
points inside the frame; never one of :data:`~videodiff.shapes.paths.HELDOUT_PATHS`' kinds) whose net direction is the
clip's direction, so the prompt ``a {color} {shape} moving {direction}`` stays true of it.
"""

from __future__ import annotations

import numpy as np

from videodiff.shapes.paths import draw_path_clip, net_direction, training_path
from videodiff.shapes.world import Clip

__all__ = ["along_training_path"]


def along_training_path(
    color: str, shape: str, direction: str, rng: np.random.Generator
) -> tuple[Clip, tuple[tuple[float, float], ...]]:
    """A clip whose object follows a training path with net direction ``direction``, and the path's points."""
    points = training_path(rng)
    while net_direction(points) != direction:  # about one in four has it
        points = training_path(rng)
    return draw_path_clip(color, shape, points, rng=rng)[0], points
