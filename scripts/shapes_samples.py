#!/usr/bin/env python
"""Render the README's sample grid of the built-in shapes model: one GIF, a tile per prompt.

    python scripts/shapes_samples.py --out samples/shapes-grid.gif

Each tile is the model's own render (its recorded defaults, a fixed seed), labelled in the
printed legend, row by row; held-out combinations (never seen in training) are marked.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from videodiff import load_pipeline, save_video
from videodiff.shapes import HELDOUT, parse_prompt, prompt_of
from videodiff.shapes.evaluate import detect

# one tile per colour, every shape and direction at least twice, three held-out combinations
PROMPTS = [
    prompt_of("red", "circle", "right"),
    prompt_of("green", "square", "up"),
    prompt_of("blue", "triangle", "left"),
    prompt_of("yellow", "square", "down"),
    prompt_of("purple", "circle", "up"),
    prompt_of("orange", "triangle", "down"),
    prompt_of("white", "square", "right"),
    prompt_of("cyan", "triangle", "left"),
    prompt_of("red", "circle", "left"),  # held out
    prompt_of("green", "square", "right"),  # held out
    prompt_of("blue", "triangle", "up"),  # held out
    prompt_of("orange", "circle", "left"),
]


def tile(videos: list[np.ndarray], columns: int, gap: int = 2) -> np.ndarray:
    """``[F H W 3]`` videos laid out in a grid, ``gap`` grey pixels between tiles."""
    frames, h, w, _ = videos[0].shape
    rows = -(-len(videos) // columns)
    grid = np.full((frames, rows * (h + gap) - gap, columns * (w + gap) - gap, 3), 90, np.uint8)
    for i, video in enumerate(videos):
        r, c = divmod(i, columns)
        grid[:, r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = video
    return grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("samples/shapes-grid.gif"))
    parser.add_argument("--model", help="default: the built-in shapes model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--columns", type=int, default=4)
    args = parser.parse_args()
    pipe = load_pipeline(args.model, device="cpu")
    videos = []
    for i, prompt in enumerate(PROMPTS):
        video = pipe(prompt, seed=args.seed).frames
        found = detect(video)
        combo = parse_prompt(prompt)
        mark = " (held out)" if combo in HELDOUT else ""
        seen = f"{found.color} {found.shape} moving {found.direction}" if found.present else "nothing"
        print(f"row {i // args.columns + 1}, column {i % args.columns + 1}: {prompt}{mark}; detector sees: {seen}")
        videos.append(video)
    fps = pipe.parts.defaults.get("fps", 8)
    print(save_video(tile(videos, args.columns), args.out, fps=fps, overwrite=True))


if __name__ == "__main__":
    main()
