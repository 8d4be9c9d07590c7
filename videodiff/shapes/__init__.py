"""The shapes world: a toy domain with an objective score, for testing what the toolkit claims.

- :mod:`videodiff.shapes.world`: the clips' generator (``a {color} {shape} moving {direction}``).
- :mod:`videodiff.shapes.evaluate`: detectors that score videos, and ``videodiff eval shapes``,
  which renders through the pipeline (so this subpackage sits above it; the built-in model's
  motion prior, a provider of starting latents, sits below it in :mod:`videodiff.motion_prior`).

The world's names are re-exported here: ``from videodiff.shapes import parse_prompt``.
"""

from videodiff.shapes.world import (
    ALL_COMBOS,
    COLORS,
    DIRECTIONS,
    FORMATS,
    HELDOUT,
    PALETTE,
    SHAPES,
    SPLITS,
    TRAIN_COMBOS,
    Clip,
    Combo,
    clip_rng,
    combos_of,
    dataset_combos,
    draw_clip,
    parse_prompt,
    prompt_of,
    render_clip,
    split_of,
    write_dataset,
)

__all__ = [
    "ALL_COMBOS",
    "COLORS",
    "DIRECTIONS",
    "FORMATS",
    "HELDOUT",
    "PALETTE",
    "SHAPES",
    "SPLITS",
    "TRAIN_COMBOS",
    "Clip",
    "Combo",
    "clip_rng",
    "combos_of",
    "dataset_combos",
    "draw_clip",
    "parse_prompt",
    "prompt_of",
    "render_clip",
    "split_of",
    "write_dataset",
]
