"""Flicker and seams of long videos by noise setting on the built-in model (issue 16).

    OMP_NUM_THREADS=1 python scripts/long_flicker.py default free_init=1 noise=mixed --seeds 1 2 3 --frames 64

Each setting ``key=value`` is a render setting (``default``: the model's); 64 frames of "a red circle moving
right" with ``--motion 0.6,0`` as in the README; prints one JSON line per video: flicker (mean absolute change
between consecutive frames, 0-255), the seam ratio (largest change at a window seam over the median elsewhere),
the direction of each 16-frame stretch and the render time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("settings", nargs="+")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--prompt", default="a red circle moving right")
    args = parser.parse_args()

    import numpy as np
    from long_checks import changes, seam_ratio, stretch_report

    from videodiff import load_pipeline

    pipe = load_pipeline(device="cpu")
    for setting in args.settings:
        given = {}
        if setting != "default":
            key, value = setting.split("=", 1)
            given[key] = type(getattr(pipe.settings(args.prompt), key) or 0)(value) if value[0].isdigit() else value
        for seed in args.seeds:
            start = time.perf_counter()
            result = pipe(args.prompt, num_frames=args.frames, seed=seed, motion=(0.6, 0), **given)
            seconds = time.perf_counter() - start
            frames = np.asarray(result.frames)
            plan = pipe.windows_for(pipe.settings(args.prompt, num_frames=args.frames, **given))
            windows = [list(w) for w in plan.indices()] if plan else [list(range(args.frames))]
            record = {
                "setting": setting,
                "seed": seed,
                "flicker": round(float(changes(frames).mean()), 2),
                "seam_ratio": round(seam_ratio(frames, windows), 2) if len(windows) > 1 else None,
                "directions": [s["direction"] for s in stretch_report(frames)],
                "render_s": round(seconds, 1),
            }
            print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
