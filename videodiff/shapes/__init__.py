"""The shapes world: a toy domain with an objective score, for testing what the toolkit claims.

- :mod:`videodiff.shapes.world`: the clips' generator (``a {color} {shape} moving {direction}``).
- :mod:`videodiff.shapes.detect`: the detector that says what a clip shows (numpy only).
- :mod:`videodiff.shapes.report`: scores of many videos as tables and JSON.
- :mod:`videodiff.shapes.evaluate`: scoring a render function or a model, and ``videodiff eval shapes``,
  which renders through the pipeline (so this subpackage sits above it; the built-in model's
  motion prior, a provider of starting latents, sits below it in :mod:`videodiff.motion_prior`).

The world's names are re-exported here: ``from videodiff.shapes import parse_prompt``.
"""

from videodiff.shapes.world import *  # noqa: F403 - the world's public names, listed in its __all__
from videodiff.shapes.world import Combo, __all__, clip_rng, dataset_combos  # noqa: F401 - also used by tests, scripts
