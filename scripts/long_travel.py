"""Prompt travel from "a red circle" to "a blue circle" on the built-in model, over seeds (issue 16's proof).

    OMP_NUM_THREADS=1 python scripts/long_travel.py --seeds 1 2 3 4 5 6 7 8

For each seed and each set of keyframes (``centred``: red held to frame 24 and blue from 40, the change centred
on frame 32; ``blend``: red at 0, blue at 32, as the issue words it), 48 frames: one JSON line with the colour
``detect`` sees in each frame (r red, b blue, c cyan, o orange, y yellow, p purple, g green, - none) and
whether the frames before 24 are all red and those after 40 all blue.
"""

from __future__ import annotations

import argparse
import json

KEYS = {
    "centred": {0: "a red circle", 24: "a red circle", 40: "a blue circle"},
    "blend": {0: "a red circle", 32: "a blue circle"},
}
LETTER = {"red": "r", "blue": "b", "cyan": "c", "orange": "o", "yellow": "y", "purple": "p", "green": "g"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--keys", nargs="+", default=list(KEYS), choices=list(KEYS))
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--travel", default="linear")
    args = parser.parse_args()

    from videodiff import load_pipeline
    from videodiff.shapes.evaluate import detect

    pipe = load_pipeline(device="cpu")
    for name in args.keys:
        for seed in args.seeds:
            frames = pipe(None, prompt_at=KEYS[name], num_frames=args.frames, seed=seed, travel=args.travel).frames
            colours = [detect(frames[f : f + 1]).color for f in range(len(frames))]
            record = {
                "keys": name,
                "seed": seed,
                "colours": "".join(LETTER.get(c, "-") for c in colours),
                "red_before_24": all(c == "red" for c in colours[:24]),
                "blue_after_40": all(c == "blue" for c in colours[41:]),
            }
            print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
